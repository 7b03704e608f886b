"""TarShardDataset: webdataset tar shards streamed, split over readers, bad and damaged members counted.

Shards are written into tmp_path with Python's tarfile by the helpers below.
"""

import io
import json
import tarfile
from collections import Counter

import pytest
from PIL import Image

from paddlemix.data import sharding
from paddlemix.data.samples import AllSamplesBadError
from paddlemix.data.webdataset_shards import TarShardDataset
from paddlemix.processors import image_transform

from streaming_helpers import read_epochs

TRANSFORM = image_transform(8, is_train=False)


def encoded_image(shade: int, size=(12, 10), image_format="JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (shade, 255 - shade, 64)).save(buffer, format=image_format)
    return buffer.getvalue()


def good_samples(prefix: str, count: int):
    """(key, {extension: bytes}) pairs with captions f"{prefix} {i}"."""
    return [(f"{prefix.replace(' ', '_')}_{i:04d}",
             {"jpg": encoded_image(i), "txt": f"{prefix} {i}".encode(), "json": b'{"i": %d}' % i})
            for i in range(count)]


def write_tar(path, members) -> bytes:
    """Writes (name, bytes) members in order; returns the tar's bytes."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def write_shard(path, samples) -> bytes:
    return write_tar(path, [(f"{key}.{ext}", data) for key, members in samples for ext, data in members.items()])




def captions_of(prefix: str, count: int):
    return [f"{prefix} {i}" for i in range(count)]


def test_brace_pattern_and_list_read_the_same_shards(tmp_path):
    for shard in range(3):
        write_shard(tmp_path / f"train-{shard:06d}.tar", good_samples(f"shard {shard}", 4))
    expected = sorted(caption for shard in range(3) for caption in captions_of(f"shard {shard}", 4))
    pattern = str(tmp_path / "train-{000000..000002}.tar")
    paths = [tmp_path / f"train-{shard:06d}.tar" for shard in range(3)]  # pathlib paths are fine too
    from_pattern, skipped = read_epochs(TarShardDataset(pattern, TRANSFORM, epochs=1))
    from_list, _ = read_epochs(TarShardDataset(paths, TRANSFORM, epochs=1))
    assert sorted(from_pattern) == sorted(from_list) == expected
    assert skipped == Counter()


def test_bad_samples_in_a_shard_are_skipped_and_counted_under_their_reason(tmp_path):
    jpeg = encoded_image(9)
    bad = {
        "not_an_image": [("text_as_jpg", {"jpg": b"not an image at all", "txt": b"x"})],
        "empty_caption": [("blank_txt", {"jpg": jpeg, "txt": b"  \n"}), ("no_txt", {"jpg": jpeg, "json": b"{}"})],
        "missing_file": [("no_image", {"txt": b"caption without an image"})],
        "tiny_image": [("tiny", {"png": encoded_image(9, size=(2, 2), image_format="PNG"), "txt": b"x"})],
        "truncated_image": [("cut_jpg", {"jpg": jpeg[: len(jpeg) // 2], "txt": b"x"})],
        "invalid_utf8": [("latin1_txt", {"jpg": jpeg, "txt": "café".encode("latin-1")})],
    }
    good = good_samples("good", len(bad))
    samples = []
    for bad_samples in bad.values():
        samples += bad_samples + [good.pop()]
    write_shard(tmp_path / "mixed.tar", samples)
    captions, skipped = read_epochs(TarShardDataset(str(tmp_path / "mixed.tar"), TRANSFORM, shuffle_buffer=3, epochs=1))
    assert sorted(captions) == captions_of("good", len(bad))
    assert skipped == Counter({reason: len(bad_samples) for reason, bad_samples in bad.items()})


def test_duplicate_member_is_counted_and_its_first_copy_kept(tmp_path):
    path = tmp_path / "dup.tar"
    write_tar(path, [("a.jpg", encoded_image(1)), ("a.txt", b"first copy"), ("a.txt", b"second copy"),
                     ("b.jpg", encoded_image(2)), ("b.txt", b"good")])
    captions, skipped = read_epochs(TarShardDataset(str(path), TRANSFORM, epochs=1))
    assert sorted(captions) == ["first copy", "good"]
    assert skipped == Counter({"corrupt_tar_member": 1})


def test_other_image_extensions_and_caption_key(tmp_path):
    samples = [("a", {"png": encoded_image(1, image_format="PNG"), "caption": b"png"}),
               ("b", {"webp": encoded_image(2, image_format="WEBP"), "caption": b"webp"}),
               ("c", {"jpeg": encoded_image(3), "caption": b"jpeg"})]
    write_shard(tmp_path / "s.tar", samples)
    captions, _ = read_epochs(TarShardDataset(str(tmp_path / "s.tar"), TRANSFORM, caption_key="caption", epochs=1))
    assert sorted(captions) == ["jpeg", "png", "webp"]


def member_offset(shard: bytes, name: str) -> int:
    """Byte offset of member `name`'s data in the tar bytes."""
    with tarfile.open(fileobj=io.BytesIO(shard)) as tar:
        return tar.getmember(name).offset_data


@pytest.mark.parametrize("cut", ["mid_image_data", "mid_caption_data", "mid_header", "at_member_boundary"])
def test_damaged_and_missing_shards_are_counted_and_reading_goes_on(tmp_path, cut):
    write_shard(tmp_path / "s-0.tar", good_samples("first", 3))
    whole = write_shard(tmp_path / "s-1.tar", good_samples("cut", 4))
    key = good_samples("cut", 4)[2][0]  # the damage hits the third sample: the first two survive
    cut_at = {
        "mid_image_data": member_offset(whole, f"{key}.jpg") + 100,
        "mid_caption_data": member_offset(whole, f"{key}.txt") + 2,
        "mid_header": member_offset(whole, f"{key}.jpg") - 300,
        "at_member_boundary": member_offset(whole, f"{key}.txt") - 512,  # after the .jpg: tarfile sees a clean end
    }[cut]
    (tmp_path / "s-1.tar").write_bytes(whole[:cut_at])
    write_shard(tmp_path / "s-3.tar", good_samples("last", 3))  # s-2.tar does not exist
    dataset = TarShardDataset(str(tmp_path / "s-{0..3}.tar"), TRANSFORM, epochs=1)
    captions, skipped = read_epochs(dataset)
    assert sorted(captions) == sorted(captions_of("first", 3) + captions_of("cut", 2) + captions_of("last", 3))
    assert skipped == Counter({"corrupt_tar_member": 1, "missing_file": 1})


def test_garbage_shard_is_one_corrupt_member(tmp_path):
    write_shard(tmp_path / "s-0.tar", good_samples("good", 2))
    (tmp_path / "s-1.tar").write_bytes(b"\x00not a tar\x01" * 100)
    captions, skipped = read_epochs(TarShardDataset(str(tmp_path / "s-{0..1}.tar"), TRANSFORM, epochs=1))
    assert sorted(captions) == captions_of("good", 2)
    assert skipped == Counter({"corrupt_tar_member": 1})


def test_only_missing_shards_raise_all_samples_bad_error(tmp_path):
    dataset = TarShardDataset(str(tmp_path / "gone-{0..1}.tar"), TRANSFORM)
    with pytest.raises(AllSamplesBadError, match="2 missing_file"):
        next(iter(dataset))


@pytest.mark.parametrize("shards, readers", [(5, 3), (2, 5), (1, 2)], ids=["many_shards", "fewer_shards", "one_shard"])
@pytest.mark.parametrize("epochs", [1, 2])
def test_readers_split_each_epoch_disjointly_and_completely(tmp_path, monkeypatch, shards, readers, epochs):
    for shard in range(shards):
        write_shard(tmp_path / f"d-{shard}.tar", good_samples(f"shard {shard}", 5) + [("bad", {"txt": b"no image"})])
    read, skipped = Counter(), Counter()
    for reader in range(readers):
        monkeypatch.setattr(sharding, "reader_shard", lambda first_worker=0, reader=reader: (reader, readers))
        dataset = TarShardDataset(str(tmp_path / f"d-{{0..{shards - 1}}}.tar"), TRANSFORM, seed=2, shuffle_buffer=4,
                                  epochs=epochs)
        captions, reader_skipped = read_epochs(dataset)
        read.update(captions)
        skipped.update(reader_skipped)
    assert read == Counter({c: epochs for shard in range(shards) for c in captions_of(f"shard {shard}", 5)})
    assert skipped == Counter({"missing_file": shards * epochs})  # each bad sample counted by one reader


def test_shuffle_is_deterministic_per_seed_and_epoch_and_differs_across_epochs(tmp_path):
    for shard in range(3):
        write_shard(tmp_path / f"d-{shard}.tar", good_samples(f"shard {shard}", 8))
    pattern = str(tmp_path / "d-{0..2}.tar")
    first, _ = read_epochs(TarShardDataset(pattern, TRANSFORM, seed=1, shuffle_buffer=6, epochs=2))
    again, _ = read_epochs(TarShardDataset(pattern, TRANSFORM, seed=1, shuffle_buffer=6, epochs=2))
    other_seed, _ = read_epochs(TarShardDataset(pattern, TRANSFORM, seed=2, shuffle_buffer=6, epochs=2))
    assert first == again
    assert sorted(first[:24]) == sorted(first[24:]) and first[:24] != first[24:]
    assert other_seed[:24] != first[:24]


def test_num_samples_from_argument_then_manifest(tmp_path):
    for shard in range(3):
        write_shard(tmp_path / f"p-{shard:06d}.tar", good_samples(f"shard {shard}", 2))
    pattern = str(tmp_path / "p-{000000..000002}.tar")
    assert TarShardDataset(pattern, TRANSFORM).num_samples is None
    shards = [{"name": f"p-{shard:06d}.tar", "count": 10 + shard, "sha256": "0" * 64} for shard in range(3)]
    manifest = {"shards": shards, "total": 33}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert TarShardDataset(pattern, TRANSFORM).num_samples == 33
    assert TarShardDataset(str(tmp_path / "p-{000001..000002}.tar"), TRANSFORM).num_samples == 23  # a subset
    assert TarShardDataset(pattern, TRANSFORM, num_samples=5).num_samples == 5
