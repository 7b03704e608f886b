"""LaionDataset: PaddleMIX LAION part files streamed, shuffled, split over readers, bad lines counted.

Every line of the fixture part (tests/fixtures/laion_part-00000, made by make_laion_fixtures.py) is
checked against what PaddleMIX's own reader yielded for it (laion_part.expected.json). The streaming
tests write more parts into tmp_path with `part_line`, which writes the fixture's layout.
"""

import base64
import gzip
import re
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import paddle
import pytest
from PIL import Image

from paddlemix.data import sharding
from paddlemix.data.laion import LaionDataset, parse_laion_line
from paddlemix.data.samples import AllSamplesBadError, BadSample, decode_image
from paddlemix.processors import image_transform

from streaming_helpers import read_epochs

TRANSFORM = image_transform(8, is_train=False)
FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_PART = FIXTURES / "laion_part-00000"
EXPECTED = json.loads((FIXTURES / "laion_part.expected.json").read_text(encoding="utf-8"))["lines"]
FIXTURE_LINES = FIXTURE_PART.read_bytes().splitlines(keepends=True)


def encoded_image(shade: int, size=(12, 10), image_format="JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (shade, 255 - shade, 64)).save(buffer, format=image_format)
    return buffer.getvalue()


def part_line(meta, image: bytes, key: int = 0, codec: str = "utf-8") -> bytes:
    """A line in PaddleMIX's layout, as the fixture writes it: key, URL, JSON captions, NONE, NONE, base64."""
    text = json.dumps(meta, ensure_ascii=False) if isinstance(meta, dict) else meta
    fields = [f"{key:09d}", f"https://example.com/{key}.jpg", text, "NONE", "NONE", base64.b64encode(image).decode()]
    return "\t".join(fields).encode(codec) + b"\n"


def good_lines(prefix: str, count: int):
    return [part_line({"caption_en": f"{prefix} {i}"}, encoded_image(i), key=i) for i in range(count)]


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


def rgb_digest(image: Image.Image) -> dict:
    rgb = image.convert("RGB")  # PaddleMIX converts on decoding; we after resizing (see samples.decode_image)
    return {"size": list(rgb.size), "rgb_sha256": hashlib.sha256(rgb.tobytes()).hexdigest()}


def good_paddlemix_caption(verdict: dict) -> bool:
    caption = verdict.get("caption")
    return isinstance(caption, str) and bool(caption.strip())


def test_fixture_gz_part_holds_the_plain_part_and_every_line_has_a_paddlemix_verdict():
    assert len(FIXTURE_LINES) == len(EXPECTED) == 38
    assert gzip.decompress((FIXTURES / "laion_part-00000.gz").read_bytes()) == FIXTURE_PART.read_bytes()


@pytest.mark.parametrize("record", EXPECTED, ids=lambda record: f"line{record['line']}-{record['label']}")
def test_each_fixture_line_yields_paddlemix_caption_and_image_or_is_skipped_under_its_reason(record):
    line = FIXTURE_LINES[record["line"] - 1]
    paddlemix = record["paddlemix"]
    parsed = parse_laion_line(line, f"laion_part-00000:{record['line']}")
    image = parsed if isinstance(parsed, BadSample) else decode_image(parsed.image, parsed.where)
    if record["label"] == "good":
        assert good_paddlemix_caption(paddlemix)
        assert parsed.caption == paddlemix["caption"]
        assert rgb_digest(image) == {"size": paddlemix["size"], "rgb_sha256": paddlemix["rgb_sha256"]}
    else:
        assert isinstance(image, BadSample) and image.reason == record["label"]
        # Skipped here and yielded by PaddleMIX only where its caption is blank or not a string (module doc).
        assert "rejected_by" in paddlemix or not good_paddlemix_caption(paddlemix)


def test_fixture_parts_plain_and_gzipped_stream_paddlemix_captions_and_count_every_other_line():
    filelist = FIXTURES / "laion_part.filelist"  # names both parts, relative to its own folder
    captions, skipped = read_epochs(LaionDataset(filelist, TRANSFORM, shuffle_buffer=0, epochs=1))
    good = [record["paddlemix"]["caption"] for record in EXPECTED if record["label"] == "good"]
    assert len(good) == 15
    assert sorted(captions) == sorted(good * 2)
    bad = Counter(record["label"] for record in EXPECTED if record["label"] != "good")
    assert skipped == Counter({reason: 2 * count for reason, count in bad.items()})


def test_part_line_helper_writes_the_fixture_layout():
    record = parse_laion_line(FIXTURE_LINES[0], "line 1")
    fields = FIXTURE_LINES[0].decode().split("\t")
    assert part_line(json.loads(fields[2]), record.image, key=0) == FIXTURE_LINES[0]


def test_reads_plain_and_gzipped_parts_named_in_the_filelist(tmp_path):
    filelist = write_dataset(tmp_path, [good_lines("plain", 4), good_lines("gzipped", 3)], gzipped={1},
                             header=b"# parts of the test set\n\n")
    captions, skipped = read_epochs(LaionDataset(filelist, TRANSFORM, epochs=1))
    assert sorted(captions) == sorted([f"plain {i}" for i in range(4)] + [f"gzipped {i}" for i in range(3)])
    assert skipped == Counter()


def test_hostile_lines_are_skipped_and_counted_not_raised(tmp_path):
    jpeg = encoded_image(1)
    hostile = {
        "empty_caption": [
            b"x" * 10_000_000 + b"\n",  # a 10 MB line without a field separator
            part_line("[" * 100_000, jpeg),  # JSON nested past the recursion limit
            part_line("1" * 5_000, jpeg),  # an integer past Python's digit limit
        ],
        "not_an_image": [part_line({"caption_en": "a 10 MB image field"}, b"")[:-1] + b"A" * 10_000_000 + b"\n"],
    }
    lines = [line for bad in hostile.values() for line in bad] + good_lines("good", 1)
    captions, skipped = read_epochs(LaionDataset(write_dataset(tmp_path, [lines]), TRANSFORM, epochs=1))
    assert captions == ["good 0"]
    assert skipped == Counter({reason: len(bad) for reason, bad in hostile.items()})


def test_part_file_of_only_bad_lines_raises_all_samples_bad_error(tmp_path):
    lines = [part_line({"caption_en": ""}, encoded_image(1)), part_line({"caption_en": "x"}, b"junk")]
    dataset = LaionDataset(write_dataset(tmp_path, [lines]), TRANSFORM)
    with pytest.raises(AllSamplesBadError, match="1 empty_caption, 1 not_an_image"):
        next(iter(dataset))


def test_missing_part_file_is_named_with_its_filelist_line_and_both_places_looked(tmp_path, monkeypatch):
    filelist = write_dataset(tmp_path, [good_lines("a", 1)])
    with open(filelist, "a") as handle:
        handle.write("part-missing.gz\n")
    monkeypatch.chdir(tmp_path / "..")
    with pytest.raises(FileNotFoundError, match=r"filelist.txt:2: part file 'part-missing.gz' does not exist "
                                                r"\(looked for .*part-missing.gz and .*part-missing.gz\)"):
        LaionDataset(filelist, TRANSFORM)


def test_relative_part_paths_resolve_from_the_current_directory_first_as_in_paddlemix(tmp_path, monkeypatch):
    # PaddleMIX opens the listed paths as given, so its filelists are relative to where training runs.
    (tmp_path / "data" / "parts").mkdir(parents=True)
    (tmp_path / "data" / "parts" / "part-00000").write_bytes(b"".join(good_lines("from the working dir", 1)))
    (tmp_path / "data" / "filelist").mkdir()
    filelist = tmp_path / "data" / "filelist" / "train.filelist"
    filelist.write_text("data/parts/part-00000\n")
    monkeypatch.chdir(tmp_path)
    captions, _ = read_epochs(LaionDataset(filelist, TRANSFORM, epochs=1))
    assert captions == ["from the working dir 0"]
    (tmp_path / "data" / "filelist" / "data" / "parts").mkdir(parents=True)
    (tmp_path / "data" / "filelist" / "data" / "parts" / "part-00000").write_bytes(b"".join(good_lines("beside", 1)))
    captions, _ = read_epochs(LaionDataset(filelist, TRANSFORM, epochs=1))
    assert captions == ["from the working dir 0"]
    monkeypatch.chdir(tmp_path / "data")  # not found from here: the path beside the filelist is used
    captions, _ = read_epochs(LaionDataset(filelist, TRANSFORM, epochs=1))
    assert captions == ["beside 0"]


def test_damaged_gzip_part_keeps_its_lines_before_the_damage_and_counts_the_rest_once(tmp_path, caplog):
    filelist = write_dataset(tmp_path, [good_lines("a", 50), good_lines("b", 3)], gzipped={0})
    part = tmp_path / "part-00000.gz"
    part.write_bytes(part.read_bytes()[:-200])
    captions, skipped = read_epochs(LaionDataset(filelist, TRANSFORM, epochs=1))
    assert skipped == Counter({"damaged_part": 1})
    kept = sorted(caption for caption in captions if caption.startswith("a "))
    assert 0 < len(kept) < 50 and kept == sorted(f"a {i}" for i in range(len(kept)))  # a prefix of the part
    assert sorted(caption for caption in captions if caption.startswith("b ")) == ["b 0", "b 1", "b 2"]
    assert re.search(r"part-00000.gz: damaged after line \d+", caplog.text)


@pytest.mark.parametrize("files, readers", [(6, 4), (4, 4), (2, 5), (1, 3)],
                         ids=["many_files", "as_many_files", "fewer_files", "one_file"])
@pytest.mark.parametrize("epochs", [1, 2])
def test_readers_split_each_epoch_disjointly_and_completely(tmp_path, monkeypatch, files, readers, epochs):
    parts = [good_lines(f"part {p}", 7) + [part_line({"caption_en": ""}, encoded_image(1))] for p in range(files)]
    filelist = write_dataset(tmp_path, parts, gzipped={0})
    read, skipped = Counter(), Counter()
    for reader in range(readers):
        monkeypatch.setattr(sharding, "reader_shard", lambda first_worker=0, reader=reader: (reader, readers))
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


def test_a_transform_that_fails_on_one_stream_image_skips_it_as_decode_error(tmp_path):
    """The bad-sample rule holds after decoding too: a transform raising on one image skips it."""
    lines = [part_line({"caption_en": f"image {i}"}, encoded_image(i, size=(12 + i, 10)), key=i) for i in range(4)]

    def fails_on_width_14(image):
        if image.width == 14:
            raise RuntimeError("no such crop")
        return TRANSFORM(image)

    captions, skipped = read_epochs(LaionDataset(write_dataset(tmp_path, [lines]), fails_on_width_14, epochs=1))
    assert sorted(captions) == ["image 0", "image 1", "image 3"]
    assert skipped == Counter({"decode_error": 1})
