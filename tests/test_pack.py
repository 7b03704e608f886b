"""The shard packer: every source packs its good samples, skips and counts bad ones, and resumes exactly."""

import hashlib
import io
import itertools
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddlemix.tools import pack as packer
from paddlemix.tools.pack import ManifestMismatchError, coco_karpathy_records, main, pack

COCO_SOURCE = {"kind": "coco_karpathy"}  # what pack() checks on resume; the CLI adds the paths


def encoded_image(seed: int, size=(12, 10), image_format="JPEG") -> bytes:
    """A small noise image, different per seed so that shards differ per sample."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def bad_images() -> dict:
    """Image bytes of each bad kind, named by the reason they must be skipped under."""
    return {
        "truncated_image": encoded_image(900, size=(32, 32))[:300],
        "not_an_image": b"this is a caption, not a picture",
        "tiny_image": encoded_image(901, size=(3, 3), image_format="PNG"),
        "empty_file": b"",
    }


def make_coco(root: Path, good: int = 30) -> tuple:
    """A Karpathy-style JSON with `good` usable records (JPEG and PNG) and one record per bad kind.

    Returns (annotations path, image root, expected [(key, caption, image bytes, extension)]).
    """
    images = root / "images"
    (images / "val2014").mkdir(parents=True)
    records, expected = [], []
    for index in range(good):
        image_format, extension = ("PNG", "png") if index % 3 == 0 else ("JPEG", "jpg")
        relative = f"val2014/img_{index:03d}.{extension}"
        data = encoded_image(index, image_format=image_format)
        (images / relative).write_bytes(data)
        caption = f" a picture number {index} "
        if index == 4:  # a val/test-style list whose first caption is blank
            caption = ["  ", f"a picture number {index}", "another caption"]
        expected.append((f"{len(records):09d}", f"a picture number {index}", data, extension))
        records.append({"caption": caption, "image": relative, "image_id": index})
        if index == 10:  # bad records sit between good ones, so keys show the gaps
            for reason, data in bad_images().items():
                (images / f"val2014/{reason}.jpg").write_bytes(data)
                records.append({"caption": "fine caption", "image": f"val2014/{reason}.jpg", "image_id": reason})
            records.append({"caption": "fine caption", "image": "val2014/not_there.jpg", "image_id": "missing"})
            records.append({"caption": "   ", "image": "val2014/img_000.png", "image_id": "blank"})
            records.append({"caption": [], "image": "val2014/img_000.png", "image_id": "no captions"})
    annotations = root / "coco_karpathy_test.json"
    annotations.write_text(json.dumps(records))
    return annotations, images, expected


COCO_SKIPPED = {
    "empty_caption": 2, "empty_file": 1, "missing_file": 1, "not_an_image": 1, "tiny_image": 1, "truncated_image": 1,
}


def read_shards(output: Path) -> list:
    """[(key, {extension: bytes})] of every shard the manifest lists, in order."""
    manifest = json.loads((output / "manifest.json").read_text())
    samples = []
    for shard in manifest["shards"]:
        with tarfile.open(output / shard["name"]) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][extension] = tar.extractfile(member).read()
    return samples


def shard_digests(output: Path) -> dict:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(output.glob("*.tar"))}


def pack_coco(annotations, images, output, **options):
    options.setdefault("shard_size", 7)
    return pack(coco_karpathy_records(annotations, images), output, source=COCO_SOURCE, **options)


def test_coco_karpathy_packs_exactly_the_good_samples_and_counts_each_bad_kind(tmp_path):
    annotations, images, expected = make_coco(tmp_path)
    manifest = pack_coco(annotations, images, tmp_path / "out")

    samples = read_shards(tmp_path / "out")
    assert [key for key, _ in samples] == [key for key, *_ in expected]
    for (key, members), (_, caption, data, extension) in zip(samples, expected):
        assert sorted(members) == sorted([extension, "json", "txt"])
        assert members[extension] == data  # copied, not re-encoded
        assert members["txt"].decode() == caption
    listed = json.loads(samples[4][1]["json"])
    assert listed["caption"] == ["  ", "a picture number 4", "another caption"]  # the whole list stays in the json
    assert manifest["skipped"] == COCO_SKIPPED
    assert manifest["total"] == len(expected) == 30
    assert manifest["complete"] and manifest["records_consumed"] == 30 + sum(COCO_SKIPPED.values())


def test_manifest_counts_and_sha256_match_the_shard_files(tmp_path):
    annotations, images, _ = make_coco(tmp_path)
    output = tmp_path / "out"
    pack_coco(annotations, images, output, prefix="coco")
    manifest = json.loads((output / "manifest.json").read_text())

    assert [shard["name"] for shard in manifest["shards"]] == [f"coco-{i:06d}.tar" for i in range(5)]
    assert [shard["count"] for shard in manifest["shards"]] == [7, 7, 7, 7, 2]
    assert {shard["name"]: shard["sha256"] for shard in manifest["shards"]} == shard_digests(output)
    for shard in manifest["shards"]:
        with tarfile.open(output / shard["name"]) as tar:
            members = tar.getmembers()
        assert len(members) == 3 * shard["count"]
        assert [m.name for m in members] == sorted(m.name for m in members)
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
    assert not list(output.glob("*.partial")) and not list(output.glob("*.tmp"))


def test_csv_source_resolves_image_paths_against_the_csv_folder(tmp_path):
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere.jpg"
    elsewhere.write_bytes(encoded_image(1))
    (tmp_path / "data" / "imgs" / "a.jpg").write_bytes(encoded_image(2))
    rows = [
        b"filepath\ttitle\tlicense",
        b"imgs/a.jpg\ta relative path\tcc",
        str(elsewhere).encode() + b"\tan absolute path\tcc",
        b"imgs/a.jpg\t\xff\xfe broken text\tcc",
        b"imgs/a.jpg\t \tcc",
        b"imgs/gone.jpg\ta missing image\tcc",
    ]
    (tmp_path / "data" / "train.csv").write_bytes(b"\n".join(rows) + b"\n")

    assert main(["--from", "csv", "--csv", str(tmp_path / "data" / "train.csv"), "--csv-separator", "\\t",
                 "--output", str(tmp_path / "out"), "--shard-size", "10"]) == 0

    samples = read_shards(tmp_path / "out")
    assert [(key, members["txt"].decode()) for key, members in samples] == [
        ("000000000", "a relative path"), ("000000001", "an absolute path"),
    ]
    assert samples[1][1]["jpg"] == encoded_image(1)
    assert json.loads(samples[0][1]["json"]) == {"filepath": "imgs/a.jpg", "title": "a relative path", "license": "cc"}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["skipped"] == {"empty_caption": 1, "invalid_utf8": 1, "missing_file": 1}
    assert manifest["source"]["separator"] == "\t"


LAION_FIXTURES = Path(__file__).parent / "fixtures"  # made by make_laion_fixtures.py, judged by PaddleMIX's reader


def test_laion_source_packs_what_paddlemix_reads_from_plain_and_gzipped_parts(tmp_path):
    expected = json.loads((LAION_FIXTURES / "laion_part.expected.json").read_text(encoding="utf-8"))["lines"]
    lines = (LAION_FIXTURES / "laion_part-00000").read_bytes().splitlines(keepends=True)
    assert main(["--from", "laion", "--filelist", str(LAION_FIXTURES / "laion_part.filelist"),  # plain, then .gz
                 "--output", str(tmp_path / "out"), "--shard-size", "4"]) == 0

    samples = read_shards(tmp_path / "out")
    good = [record for record in expected if record["label"] == "good"]
    assert [key for key, _ in samples] == [f"{part * len(lines) + record['line'] - 1:09d}"
                                           for part in range(2) for record in good]
    for (key, members), record in zip(samples, good * 2):
        paddlemix = record["paddlemix"]
        assert members["txt"].decode("utf-8") == paddlemix["caption"], key
        (image_bytes,) = [data for extension, data in members.items() if extension not in ("txt", "json")]
        rgb = Image.open(io.BytesIO(image_bytes)).convert("RGB")
        assert list(rgb.size) == paddlemix["size"], key
        assert hashlib.sha256(rgb.tobytes()).hexdigest() == paddlemix["rgb_sha256"], key
        line = lines[record["line"] - 1]
        codec = "gb18030" if "gb18030" in paddlemix["caption"] else "utf-8"
        assert json.loads(members["json"]) == json.loads(line.decode(codec).strip().split("\t")[2]), key
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    bad = Counter(record["label"] for record in expected if record["label"] != "good")
    assert manifest["skipped"] == {reason: 2 * count for reason, count in sorted(bad.items())}


def test_laion_source_packs_a_gzipped_part_cut_short_up_to_the_damage_and_counts_it(tmp_path):
    part = tmp_path / "part-00000.gz"
    whole = (LAION_FIXTURES / "laion_part-00000.gz").read_bytes()
    part.write_bytes(whole[: len(whole) // 2])
    (tmp_path / "filelist").write_text(f"{part}\n")
    assert main(["--from", "laion", "--filelist", str(tmp_path / "filelist"), "--output", str(tmp_path / "out"),
                 "--shard-size", "4"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["skipped"]["damaged_part"] == 1
    assert 0 < len(read_shards(tmp_path / "out")) < 15  # the good lines before the damage, of 15


def test_folder_source_pairs_images_with_their_txt_in_sorted_path_order(tmp_path):
    folder = tmp_path / "folder"
    (folder / "b").mkdir(parents=True)
    files = {"b/z.jpg": encoded_image(1), "a.png": encoded_image(2, image_format="PNG"), "b/c.jpg": encoded_image(3)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        (folder / name).with_suffix(".txt").write_text(f"caption of {name}\n")
    (folder / "b" / "no_caption.jpg").write_bytes(encoded_image(4))
    (folder / "notes.txt").write_text("a caption file without an image is ignored")
    (folder / "d.bmp").write_bytes(encoded_image(5, image_format="BMP"))
    (folder / "d.txt").write_text("a bitmap")

    assert main(["--from", "folder", "--folder", str(folder),
                 "--output", str(tmp_path / "out"), "--shard-size", "2"]) == 0

    samples = read_shards(tmp_path / "out")
    assert [json.loads(m["json"])["image"] for _, m in samples] == ["a.png", "b/c.jpg", "b/z.jpg", "d.bmp"]
    assert [m["txt"].decode() for _, m in samples] == [
        "caption of a.png", "caption of b/c.jpg", "caption of b/z.jpg", "a bitmap",
    ]
    assert samples[0][1]["png"] == files["a.png"]
    # The shard reader takes jpg/png/webp only, so a bitmap becomes a PNG with the same pixels.
    bitmap = Image.open(io.BytesIO(samples[3][1]["png"]))
    assert bitmap.format == "PNG"
    assert np.array_equal(np.asarray(bitmap), np.asarray(Image.open(io.BytesIO(encoded_image(5, image_format="BMP")))))
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["skipped"] == {"empty_caption": 1}


def test_max_side_resizes_and_reencodes_only_images_longer_than_it(tmp_path):
    wide, small = encoded_image(1, size=(40, 24), image_format="PNG"), encoded_image(2, size=(16, 12))
    annotations = tmp_path / "a.json"
    (tmp_path / "wide.png").write_bytes(wide)
    (tmp_path / "small.jpg").write_bytes(small)
    annotations.write_text(json.dumps([
        {"caption": "wide", "image": "wide.png"}, {"caption": "small", "image": "small.jpg"},
    ]))

    pack(coco_karpathy_records(annotations, tmp_path), tmp_path / "out", 10, COCO_SOURCE, max_side=20, quality=80)

    (_, resized), (_, kept) = read_shards(tmp_path / "out")
    assert sorted(resized) == ["jpg", "json", "txt"]
    image = Image.open(io.BytesIO(resized["jpg"]))
    assert (image.format, image.size) == ("JPEG", (20, 12))
    assert kept["jpg"] == small


def crashing(records, after: int):
    """The records, then a crash once `after` of them were handed out (as a kill would)."""
    yield from itertools.islice(records, after)
    raise KeyboardInterrupt("simulated crash")


# Records 0-10 and 18-36 are good; 7 records end shard 0 exactly, the others stop inside a shard.
@pytest.mark.parametrize("crash_after, leaves_partial", [(3, True), (7, False), (17, True), (24, True), (36, True)])
def test_crash_mid_run_then_rerun_gives_byte_identical_shards(tmp_path, crash_after, leaves_partial):
    annotations, images, expected = make_coco(tmp_path)
    pack_coco(annotations, images, tmp_path / "uninterrupted")

    with pytest.raises(KeyboardInterrupt):
        pack(crashing(coco_karpathy_records(annotations, images), crash_after), tmp_path / "resumed",
             7, COCO_SOURCE)
    assert bool(list((tmp_path / "resumed").glob("*.tar.partial"))) == leaves_partial
    pack_coco(annotations, images, tmp_path / "resumed")

    assert shard_digests(tmp_path / "resumed") == shard_digests(tmp_path / "uninterrupted")
    manifests = [(tmp_path / run / "manifest.json").read_bytes() for run in ("resumed", "uninterrupted")]
    assert manifests[0] == manifests[1]
    assert [key for key, _ in read_shards(tmp_path / "resumed")] == [key for key, *_ in expected]
    assert not list((tmp_path / "resumed").glob("*.partial"))


def test_crash_after_a_shard_is_renamed_but_before_the_manifest_is_written(tmp_path, monkeypatch):
    annotations, images, _ = make_coco(tmp_path)
    pack_coco(annotations, images, tmp_path / "uninterrupted")
    real_write = packer._write_manifest
    calls = itertools.count()

    def write_then_crash(output, manifest):
        if next(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        real_write(output, manifest)

    monkeypatch.setattr(packer, "_write_manifest", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        pack_coco(annotations, images, tmp_path / "resumed")
    monkeypatch.setattr(packer, "_write_manifest", real_write)
    recorded = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert len(recorded["shards"]) == 2 and (tmp_path / "resumed" / "shard-000002.tar").exists()

    pack_coco(annotations, images, tmp_path / "resumed")

    assert shard_digests(tmp_path / "resumed") == shard_digests(tmp_path / "uninterrupted")


def test_resuming_skips_the_records_already_in_completed_shards(tmp_path):
    annotations, images, _ = make_coco(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        pack(crashing(coco_karpathy_records(annotations, images), 20), tmp_path / "out", 7, COCO_SOURCE)
    consumed = json.loads((tmp_path / "out" / "manifest.json").read_text())["records_consumed"]
    loaded = []

    def watched():
        for record in coco_karpathy_records(annotations, images):
            yield packer.SourceRecord(record.where, lambda record=record: loaded.append(record.where) or record.load())

    pack(watched(), tmp_path / "out", 7, COCO_SOURCE)

    assert consumed > 0 and loaded[0] == f"{annotations}[{consumed}]"


def test_rerun_with_other_options_refuses_and_overwrite_starts_again(tmp_path, caplog):
    annotations, images, _ = make_coco(tmp_path)
    output = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):  # leaves shards 0-3 and shard-000004.tar.partial
        pack(crashing(coco_karpathy_records(annotations, images), 36), output, 7, COCO_SOURCE)
    leftovers = sorted(path.name for path in output.iterdir())

    with pytest.raises(ManifestMismatchError, match=r"options\.shard_size: 7 then, 16 now.*new --output.*--overwrite"):
        pack_coco(annotations, images, output, shard_size=16)
    assert sorted(path.name for path in output.iterdir()) == leftovers  # refusing touches nothing
    args = ["--from", "coco_karpathy", "--annotations", str(annotations), "--image-root", str(images),
            "--output", str(output), "--shard-size", "16"]
    assert main(args) == 1
    assert "--overwrite" in caplog.text

    assert main(args + ["--overwrite"]) == 0
    assert sorted(path.name for path in output.iterdir()) == ["manifest.json", "shard-000000.tar", "shard-000001.tar"]
    manifest = json.loads((output / "manifest.json").read_text())
    assert [shard["count"] for shard in manifest["shards"]] == [16, 14]


def test_cli_packs_coco_prints_a_summary_and_a_rerun_does_nothing(tmp_path, capsys):
    annotations, images, _ = make_coco(tmp_path)
    args = ["--from", "coco_karpathy", "--annotations", str(annotations), "--image-root", str(images),
            "--output", str(tmp_path / "out"), "--shard-size", "16", "--prefix", "coco"]

    assert main(args) == 0
    summary = capsys.readouterr().out.strip()
    digests = shard_digests(tmp_path / "out")
    assert main(args) == 0

    assert summary.startswith("packed 30 samples into 2 shards")
    assert "skipped 7 (empty_caption=2, empty_file=1" in summary
    assert shard_digests(tmp_path / "out") == digests
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"] == {"kind": "coco_karpathy", "annotations": str(annotations.resolve()),
                                  "image_root": str(images.resolve())}


def test_cli_names_a_missing_source_flag_or_path(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--from", "coco_karpathy", "--annotations", "a.json", "--output", str(tmp_path), "--shard-size", "4"])
    assert "--from coco_karpathy needs --image-root" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--from", "folder", "--folder", str(tmp_path / "nowhere"),
              "--output", str(tmp_path), "--shard-size", "4"])
    assert f"--folder {tmp_path / 'nowhere'}: no such file or folder" in capsys.readouterr().err
