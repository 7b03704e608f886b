"""LaionDataset: PaddleMIX LAION part files streamed, shuffled, split over readers, bad lines counted.

Part files are written into tmp_path by the helpers below.
"""

import base64
import gzip
import io
import json
from collections import Counter
from pathlib import Path

import paddle
import pytest
from PIL import Image

from paddlemix.data import sharding
from paddlemix.data.laion import LaionDataset
from paddlemix.data.samples import AllSamplesBadError
from paddlemix.processors import image_transform

from streaming_helpers import read_epochs

TRANSFORM = image_transform(8, is_train=False)


def encoded_image(shade: int, size=(12, 10), image_format="JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (shade, 255 - shade, 64)).save(buffer, format=image_format)
    return buffer.getvalue()


def part_line(meta, image: bytes, codec: str = "utf-8") -> bytes:
    """A PaddleMIX LAION line: id, JSON captions, two unused fields, base64 image."""
    text = json.dumps(meta, ensure_ascii=False) if isinstance(meta, dict) else meta
    fields = ["id", text, "url", "0.3", base64.b64encode(image).decode("ascii")]
    return "\t".join(fields).encode(codec) + b"\n"


def good_lines(prefix: str, count: int):
    return [part_line({"caption_en": f"{prefix} {i}"}, encoded_image(i)) for i in range(count)]


def write_dataset(tmp_path, parts, gzipped=(), header=b"") -> str:
    """Writes each list of lines as a part file (gzipped if its index is in `gzipped`) and a filelist."""
    names = []
    for index, lines in enumerate(parts):
        name = f"part-{index:05d}" + (".gz" if index in gzipped else "")
        opener = gzip.open if index in gzipped else open
        with opener(tmp_path / name, "wb") as handle:
            handle.write(b"".join(lines))
        names.append(name)
    filelist = tmp_path / "filelist.txt"
    filelist.write_bytes(header + "\n".join(names).encode() + b"\n")
    return str(filelist)




def test_reads_plain_and_gzipped_parts_named_in_the_filelist(tmp_path):
    filelist = write_dataset(tmp_path, [good_lines("plain", 4), good_lines("gzipped", 3)], gzipped={1},
                             header=b"# parts of the test set\n\n")
    captions, skipped = read_epochs(LaionDataset(filelist, TRANSFORM, epochs=1))
    assert sorted(captions) == sorted([f"plain {i}" for i in range(4)] + [f"gzipped {i}" for i in range(3)])
    assert skipped == Counter()


def test_caption_falls_back_to_blip_caption_en(tmp_path):
    lines = [
        part_line({"caption_en": "english"}, encoded_image(1)),
        part_line({"blip_caption_en": "blip only"}, encoded_image(2)),
        part_line({"caption_en": "  ", "blip_caption_en": "blip after blank"}, encoded_image(3)),
    ]
    captions, _ = read_epochs(LaionDataset(write_dataset(tmp_path, [lines]), TRANSFORM, epochs=1))
    assert sorted(captions) == ["blip after blank", "blip only", "english"]


def test_gb18030_line_decodes(tmp_path):
    caption = "一只猫在沙发上睡觉"
    with pytest.raises(UnicodeDecodeError):  # so the line needs the fallback codec
        caption.encode("gb18030").decode("utf-8")
    lines = [part_line({"caption_en": caption}, encoded_image(1), codec="gb18030")]
    captions, skipped = read_epochs(LaionDataset(write_dataset(tmp_path, [lines]), TRANSFORM, epochs=1))
    assert captions == [caption] and skipped == Counter()


def test_every_bad_line_is_skipped_and_counted_under_its_reason(tmp_path):
    jpeg = encoded_image(7)
    caption = {"caption_en": "a bad one"}
    bad = {
        "bad_base64": [b"id\t" + json.dumps(caption).encode() + b"\turl\t0.3\tnot*base64!\n",
                       b"id\t" + json.dumps(caption).encode() + b"\turl\n"],  # no image field
        "not_an_image": [part_line(caption, b"these bytes are text, not an image")],
        "truncated_image": [part_line(caption, jpeg[: len(jpeg) // 2])],
        "tiny_image": [part_line(caption, encoded_image(7, size=(3, 3), image_format="PNG"))],
        "empty_file": [part_line(caption, b"")],
        "empty_caption": [part_line({"caption_en": " "}, jpeg), part_line({"other": "x"}, jpeg),
                          part_line("{not json", jpeg), b"\n"],
        # 0xff starts no character in UTF-8 or in gb18030
        "invalid_utf8": [b'id\t{"caption_en": "\xff\xfe"}\turl\t0.3\t' + base64.b64encode(jpeg) + b"\n"],
    }
    good = good_lines("good", len(bad))
    lines = []
    for bad_lines in bad.values():
        lines += bad_lines + [good.pop()]
    filelist = write_dataset(tmp_path, [lines])
    captions, skipped = read_epochs(LaionDataset(filelist, TRANSFORM, shuffle_buffer=4, epochs=1))
    assert sorted(captions) == sorted(f"good {i}" for i in range(len(bad)))
    assert skipped == Counter({reason: len(bad_lines) for reason, bad_lines in bad.items()})


def test_part_file_of_only_bad_lines_raises_all_samples_bad_error(tmp_path):
    lines = [part_line({"caption_en": ""}, encoded_image(1)), part_line({"caption_en": "x"}, b"junk")]
    dataset = LaionDataset(write_dataset(tmp_path, [lines]), TRANSFORM)
    with pytest.raises(AllSamplesBadError, match="1 empty_caption, 1 not_an_image"):
        next(iter(dataset))


def test_missing_part_file_is_named_with_its_filelist_line(tmp_path):
    filelist = write_dataset(tmp_path, [good_lines("a", 1)])
    with open(filelist, "a") as handle:
        handle.write("part-missing.gz\n")
    with pytest.raises(FileNotFoundError, match=r"filelist.txt:2: part file 'part-missing.gz'"):
        LaionDataset(filelist, TRANSFORM)


def test_damaged_gzip_part_raises_naming_the_part(tmp_path):
    filelist = write_dataset(tmp_path, [good_lines("a", 50)], gzipped={0})
    part = tmp_path / "part-00000.gz"
    part.write_bytes(part.read_bytes()[:-200])
    with pytest.raises(OSError, match=r"part-00000.gz: damaged after line \d+"):
        read_epochs(LaionDataset(filelist, TRANSFORM, epochs=1))


@pytest.mark.parametrize("files, readers", [(6, 4), (4, 4), (2, 5), (1, 3)],
                         ids=["many_files", "as_many_files", "fewer_files", "one_file"])
@pytest.mark.parametrize("epochs", [1, 2])
def test_readers_split_each_epoch_disjointly_and_completely(tmp_path, monkeypatch, files, readers, epochs):
    parts = [good_lines(f"part {p}", 7) + [part_line({"caption_en": ""}, encoded_image(1))] for p in range(files)]
    filelist = write_dataset(tmp_path, parts, gzipped={0})
    read, skipped = Counter(), Counter()
    for reader in range(readers):
        monkeypatch.setattr(sharding, "reader_shard", lambda reader=reader: (reader, readers))
        dataset = LaionDataset(filelist, TRANSFORM, seed=3, shuffle_buffer=5, epochs=epochs)
        captions, reader_skipped = read_epochs(dataset)
        read.update(captions)
        skipped.update(reader_skipped)
    assert read == Counter({f"part {p} {i}": epochs for p in range(files) for i in range(7)})
    assert skipped == Counter({"empty_caption": files * epochs})  # each bad line counted by one reader


def test_shuffle_is_deterministic_per_seed_and_epoch_and_differs_across_epochs(tmp_path):
    filelist = write_dataset(tmp_path, [good_lines(f"part {p}", 10) for p in range(3)])
    first, _ = read_epochs(LaionDataset(filelist, TRANSFORM, seed=5, shuffle_buffer=8, epochs=2))
    again, _ = read_epochs(LaionDataset(filelist, TRANSFORM, seed=5, shuffle_buffer=8, epochs=2))
    other_seed, _ = read_epochs(LaionDataset(filelist, TRANSFORM, seed=6, shuffle_buffer=8, epochs=2))
    epoch0, epoch1 = first[:30], first[30:]
    assert first == again
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
    assert other_seed[:30] != epoch0
    unshuffled, _ = read_epochs(LaionDataset(filelist, TRANSFORM, shuffle_buffer=0, epochs=1))
    assert unshuffled != sorted(unshuffled, key=lambda c: [int(n) for n in c.split()[1:]])  # part order shuffled
    for p in range(3):  # but within a part, without a buffer, lines keep their order
        lines = [c for c in unshuffled if c.startswith(f"part {p} ")]
        assert lines == [f"part {p} {i}" for i in range(10)]


def test_num_samples_from_argument_then_count_file(tmp_path):
    filelist = write_dataset(tmp_path, [good_lines("a", 2)])
    assert LaionDataset(filelist, TRANSFORM).num_samples is None
    with open(filelist + ".count", "w") as handle:
        handle.write("12345\n")
    assert LaionDataset(filelist, TRANSFORM).num_samples == 12345
    assert LaionDataset(Path(filelist), TRANSFORM).num_samples == 12345
    assert LaionDataset(filelist, TRANSFORM, num_samples=7).num_samples == 7


@pytest.mark.parametrize("files", [3, 1], ids=["a_part_per_worker", "one_part_for_both"])
def test_dataloader_workers_read_one_epoch_disjointly_and_completely(tmp_path, files):
    filelist = write_dataset(tmp_path, [good_lines(f"part {p}", 6) for p in range(files)])
    loader = paddle.io.DataLoader(LaionDataset(filelist, TRANSFORM, seed=1, epochs=1), batch_size=None, num_workers=2)
    captions = [sample["caption"] for sample in loader]
    assert sorted(captions) == sorted(f"part {p} {i}" for p in range(files) for i in range(6))
