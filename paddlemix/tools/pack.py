"""Pack many small image-caption files into webdataset tar shards, resumably.

    python -m paddlemix.tools.pack --from coco_karpathy --annotations coco_karpathy_train.json \\
        --image-root ./coco --output ./coco_shards --shard-size 10000 [--max-side 512 --quality 95]
    python -m paddlemix.tools.pack --from csv --csv train.csv --output DIR --shard-size N
    python -m paddlemix.tools.pack --from laion --filelist parts.txt --output DIR --shard-size N
    python -m paddlemix.tools.pack --from folder --folder ./images --output DIR --shard-size N

Writes `DIR/<prefix>-000000.tar, ...`; sample `<key>` is stored as `<key>.<ext>` (the image),
`<key>.txt` (the caption) and `<key>.json` (the source record). The key is the sample's zero-padded
position in the source, so it is unique, stable across reruns, and points back to the source; gaps
are the bad samples that were skipped. The image extension names the bytes' format (`jpg`, `png`,
`webp`), since LAION's base64 carries no file name. Images are copied byte for byte, except those
longer than `--max-side` (resized, re-encoded as `jpg`) and formats the shard reader does not read
(BMP, GIF, TIFF: re-encoded losslessly as `png`).

A COCO Karpathy record whose caption is a list (the val/test files; the train file already has one
record per caption) gives one sample: the first caption in `.txt`, the whole record with every
caption in `.json`. One sample per image keeps retrieval evaluation's image-to-captions grouping,
and training uses the train file.

Crash safety: a shard is written as `<name>.tar.partial` and renamed when complete, then
`DIR/manifest.json` is replaced atomically with the completed shards and how many source records
they consumed. Rerunning the same command resumes after the last completed shard, and the shards
come out byte-identical to an uninterrupted run (tar headers carry no time, owner or permissions of
this machine). Manifest:

    {"version": 1, "source": {...}, "options": {...}, "shards": [{"name", "count", "sha256"}],
     "total": samples in shards, "skipped": {reason: count}, "records_consumed": R, "complete": bool}

While `complete` is false, `total` and `skipped` cover the completed shards only.
"""

import argparse
import csv
import hashlib
import io
import itertools
import json
import logging
import os
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from PIL import Image

from ..data.laion import CAPTION_FIELD, parse_laion_line, read_filelist, read_part_lines, split_laion_line
from ..data.samples import BadSample, clean_caption, decode_image, decode_text, log_skipped, read_file
from ..data.webdataset_shards import IMAGE_EXTENSIONS, MANIFEST
from ..utils.log import logger

MANIFEST_VERSION = 1
KEY_DIGITS = 9  # LAION-400M's record count fits, so keys sort in source order
FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
EXTENSION_OF_FORMAT = {"JPEG": "jpg", "MPO": "jpg"}  # PIL format -> member extension; others: lower-cased


class ManifestMismatchError(RuntimeError):
    """The output directory holds a pack of another source or other options."""


@dataclass(frozen=True)
class Sample:
    image: bytes  # encoded, exactly as found in the source
    caption: str  # cleaned
    meta: dict  # the source record, stored as <key>.json


@dataclass(frozen=True)
class SourceRecord:
    where: str  # file and line or index, for the log
    load: Callable[[], Union[Sample, BadSample]]  # lazy, so resuming skips records without reading them


# ---------------------------------------------------------------- sources


def _first_caption(caption: object, where: str) -> Union[str, BadSample]:
    """A caption, or the first usable one of a list."""
    if not isinstance(caption, list):
        return clean_caption(caption, where)
    for candidate in caption:
        cleaned = clean_caption(candidate, where)
        if not isinstance(cleaned, BadSample):
            return cleaned
    return BadSample("empty_caption", where)


def _sample_from_file(image_path: Path, caption: object, meta: dict, where: str) -> Union[Sample, BadSample]:
    text = _first_caption(caption, where)
    if isinstance(text, BadSample):
        return text
    data = read_file(image_path)
    return data if isinstance(data, BadSample) else Sample(data, text, meta)


def coco_karpathy_records(annotations: Path, image_root: Path) -> Iterator[SourceRecord]:
    """Records of a COCO Karpathy split file (`[{"caption", "image", "image_id"}, ...]`)."""
    with open(annotations, encoding="utf-8") as handle:
        entries = json.load(handle)
    if not isinstance(entries, list):
        raise ValueError(f"--annotations {annotations}: expected a JSON list of records, got {type(entries).__name__}")
    for index, entry in enumerate(entries):
        where = f"{annotations}[{index}]"
        image = entry.get("image") if isinstance(entry, dict) else None
        if not isinstance(image, str):
            detail = f"'image' is {image!r:.80}, not a path" if isinstance(entry, dict) else "not an object"
            yield SourceRecord(where, partial(BadSample, "bad_field", where, detail))
            continue
        yield SourceRecord(where, partial(_sample_from_file, image_root / image, entry.get("caption"), entry, where))


def _csv_row_sample(row: dict, base: Path, img_key: str, caption_key: str, where: str) -> Union[Sample, BadSample]:
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")  # undecodable bytes were kept as lone surrogates
    except UnicodeEncodeError:
        return BadSample("invalid_utf8", where)
    if not row[img_key]:
        return BadSample("missing_file", where)
    return _sample_from_file(base / row[img_key], row[caption_key], row, where)


def csv_records(path: Path, img_key: str, caption_key: str, separator: str) -> Iterator[SourceRecord]:
    """Rows of an open_clip-style CSV; image paths are relative to the CSV's folder unless absolute."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=separator)
        missing = [key for key in (img_key, caption_key) if key not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"--csv {path}: no column {', '.join(map(repr, missing))} (columns: {reader.fieldnames}); "
                "set --csv-img-key / --csv-caption-key / --csv-separator"
            )
        for row in reader:
            where = f"{path}:{reader.line_num}"
            yield SourceRecord(where, partial(_csv_row_sample, row, path.parent, img_key, caption_key, where))


def _laion_line_sample(line: bytes, where: str) -> Union[Sample, BadSample]:
    record = parse_laion_line(line, where)  # the one place a LAION line is judged good or bad
    if isinstance(record, BadSample):
        return record
    # The reader keeps no metadata; a good line decodes and holds a JSON object in this field.
    meta = json.loads(split_laion_line(decode_text(line, where, fallback="gb18030"))[CAPTION_FIELD])
    return Sample(record.image, record.caption, meta)


def laion_records(filelist: Path) -> Iterator[SourceRecord]:
    """Lines of the LAION part files named in `filelist` (format: `paddlemix.data.laion`)."""
    for part in read_filelist(str(filelist)):
        for number, line in read_part_lines(part):
            where = f"{part}:{number}"
            if isinstance(line, BadSample):
                yield SourceRecord(where, partial(BadSample, line.reason, line.where))
            else:
                yield SourceRecord(where, partial(_laion_line_sample, line, where))


def _folder_sample(image_path: Path, root: Path) -> Union[Sample, BadSample]:
    caption_path = image_path.with_suffix(".txt")
    raw = read_file(caption_path)
    if isinstance(raw, BadSample):
        return BadSample("empty_caption", str(caption_path))  # an image without its caption file
    caption = decode_text(raw, str(caption_path))
    if isinstance(caption, BadSample):
        return caption
    return _sample_from_file(image_path, caption, {"image": image_path.relative_to(root).as_posix()}, str(image_path))


def folder_records(root: Path) -> Iterator[SourceRecord]:
    """Every image file under `root` with its same-named `.txt` caption, sorted by relative path."""
    images = sorted(path.relative_to(root).as_posix() for path in root.rglob("*")
                    if path.suffix.lower() in FOLDER_IMAGE_SUFFIXES)
    for relative in images:
        yield SourceRecord(str(root / relative), partial(_folder_sample, root / relative, root))


# ---------------------------------------------------------------- shards


def _members(record: SourceRecord, max_side: Optional[int], quality: int) -> Union[Dict[str, bytes], BadSample]:
    """The tar members of one sample by extension (image, `txt`, `json`), or why it is skipped."""
    try:
        return _encoded_members(record, max_side, quality)
    except Exception as error:  # the bad-sample rule: whatever one sample raises skips it (the rerun does too)
        return BadSample("decode_error", record.where, f"{type(error).__name__}: {error}")


def _encoded_members(record: SourceRecord, max_side: Optional[int], quality: int) -> Union[Dict[str, bytes], BadSample]:
    sample = record.load()
    if isinstance(sample, BadSample):
        return sample
    image = decode_image(sample.image, record.where)  # also when copying: a broken image must not reach a shard
    if isinstance(image, BadSample):
        return image
    image_format = Image.open(io.BytesIO(sample.image)).format
    extension, data = EXTENSION_OF_FORMAT.get(image_format, image_format.lower()), sample.image
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = tuple(max(1, round(side * scale)) for side in image.size)
        encoded = io.BytesIO()
        image.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(encoded, format="JPEG", quality=quality)
        extension, data = "jpg", encoded.getvalue()
    elif extension not in IMAGE_EXTENSIONS:  # e.g. BMP, GIF, TIFF: the shard reader would not find them
        encoded = io.BytesIO()
        image.save(encoded, format="PNG")
        extension, data = "png", encoded.getvalue()
    meta = json.dumps(sample.meta, ensure_ascii=False).encode("utf-8")
    return {extension: data, "txt": sample.caption.encode("utf-8"), "json": meta}


def _fsync_replace(source: Path, target: Path) -> None:
    with open(source, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(source, target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(partial(handle.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """One tar shard, written to `<name>.partial` and renamed when finished."""

    def __init__(self, path: Path):
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.tar = tarfile.open(self.partial, "w", format=tarfile.PAX_FORMAT)
        self.count = 0

    def add(self, key: str, members: Dict[str, bytes]) -> None:
        for extension in sorted(members):
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size = len(members[extension])
            # Fixed header fields: a rerun on another day or machine writes the same bytes.
            info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
            self.tar.addfile(info, io.BytesIO(members[extension]))
        self.count += 1

    def finish(self) -> dict:
        self.tar.close()
        _fsync_replace(self.partial, self.path)
        return {"name": self.path.name, "count": self.count, "sha256": _sha256(self.path)}


# ---------------------------------------------------------------- manifest and packing


def _write_manifest(output: Path, manifest: dict) -> None:
    temporary = output / (MANIFEST + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    _fsync_replace(temporary, output / MANIFEST)


def _differences(old: dict, new: dict, prefix: str) -> List[str]:
    return [
        f"{prefix}.{key}: {old.get(key)!r} then, {new.get(key)!r} now"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _start(output: Path, source: dict, options: dict, overwrite: bool) -> dict:
    """The manifest to continue from: the one in `output` when it is the same pack, else a fresh one."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / MANIFEST
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if old is not None and overwrite:
        for shard in old.get("shards", []):
            (output / shard["name"]).unlink(missing_ok=True)
        path.unlink()
        old = None
    if old is not None:
        _check_same_pack(path, old, source, options)
    kept = {shard["name"] for shard in old["shards"]} if old else set()
    # Shards a crashed run left unfinished, or finished but never recorded: this run rewrites them.
    for stale in sorted([*output.glob("*.tar.partial"), *output.glob(f"{options['prefix']}-*.tar")]):
        if stale.name not in kept:
            logger.info("removing %s, left by an unfinished run", stale)
            stale.unlink()
    if old is not None:
        return old
    return {
        "version": MANIFEST_VERSION, "source": source, "options": options, "shards": [],
        "total": 0, "skipped": {}, "records_consumed": 0, "complete": False,
    }


def _check_same_pack(path: Path, old: dict, source: dict, options: dict) -> None:
    differences = _differences(old.get("source", {}), source, "source")
    differences += _differences(old.get("options", {}), options, "options")
    if old.get("version") != MANIFEST_VERSION or differences:
        raise ManifestMismatchError(
            f"{path} was written for a different pack ({'; '.join(differences) or 'manifest version'}); "
            "pick a new --output, or pass --overwrite to delete its shards and start again"
        )
    missing = [shard["name"] for shard in old["shards"] if not (path.parent / shard["name"]).is_file()]
    if missing:
        raise ManifestMismatchError(
            f"{path} lists shards that are gone: {', '.join(missing)}; pass --overwrite to start again"
        )


def _commit(output: Path, manifest: dict, writer: Optional[ShardWriter], skipped: Counter, consumed: int,
            complete: bool) -> None:
    """Finish the open shard (if any), then record it and the cursor in the manifest."""
    if writer is not None:
        manifest["shards"].append(writer.finish())
        logger.info("wrote %s (%d samples)", writer.path, writer.count)
    manifest.update(
        total=sum(shard["count"] for shard in manifest["shards"]),
        skipped=dict(sorted(skipped.items())), records_consumed=consumed, complete=complete,
    )
    _write_manifest(output, manifest)


def pack(
    records: Iterable[SourceRecord],
    output: Path,
    shard_size: int,
    source: dict,
    max_side: Optional[int] = None,
    quality: int = 95,
    prefix: str = "shard",
    overwrite: bool = False,
) -> dict:
    """Pack `records` (the whole source, in order) into `output`, resuming a previous run; the manifest.

    `source` describes the records (kind and paths); with the options it must match the
    manifest of a run being resumed. `max_side` is in pixels; `quality` is JPEG's 1-95 scale.
    """
    if shard_size < 1 or (max_side is not None and max_side < 1) or not 1 <= quality <= 100:
        raise ValueError(f"need --shard-size >= 1, --max-side >= 1 and --quality in 1..100; got "
                         f"{shard_size}, {max_side} and {quality}")
    output = Path(output)
    options = {"shard_size": shard_size, "max_side": max_side, "prefix": prefix}
    options["quality"] = quality if max_side else None  # unused without --max-side, so no reason to refuse a resume
    manifest = _start(output, source, options, overwrite)
    if manifest["complete"]:
        logger.info("%s: already complete (%d shards), nothing to do", output, len(manifest["shards"]))
        return manifest
    consumed = manifest["records_consumed"]
    if consumed:
        logger.info("%s: resuming after %d shards, skipping %d source records",
                    output, len(manifest["shards"]), consumed)
    skipped = Counter(manifest["skipped"])
    writer = None
    for index, record in enumerate(itertools.islice(records, consumed, None), start=consumed):
        consumed = index + 1
        members = _members(record, max_side, quality)
        if isinstance(members, BadSample):
            skipped[members.reason] += 1
            log_skipped(members)
            continue
        if writer is None:
            writer = ShardWriter(output / f"{prefix}-{len(manifest['shards']):06d}.tar")
        writer.add(f"{index:0{KEY_DIGITS}d}", members)
        if writer.count == shard_size:
            _commit(output, manifest, writer, skipped, consumed, complete=False)
            writer = None
    _commit(output, manifest, writer, skipped, consumed, complete=True)
    return manifest


# ---------------------------------------------------------------- command line


def _source_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Tuple[dict, Iterator[SourceRecord]]:
    """The source description kept in the manifest, and its records."""
    needed = {
        "coco_karpathy": ("annotations", "image_root"), "csv": ("csv",), "laion": ("filelist",), "folder": ("folder",),
    }[args.source]
    absent = [name for name in needed if getattr(args, name) is None]
    if absent:
        parser.error(f"--from {args.source} needs {' '.join('--' + name.replace('_', '-') for name in absent)}")
    paths = {name: getattr(args, name).resolve() for name in needed}
    for name, path in paths.items():
        if not path.exists():
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: no such file or folder")
    description = {"kind": args.source, **{name: str(path) for name, path in paths.items()}}
    if args.source == "coco_karpathy":
        return description, coco_karpathy_records(paths["annotations"], paths["image_root"])
    if args.source == "csv":
        separator = "\t" if args.csv_separator == "\\t" else args.csv_separator  # a shell passes '\t' literally
        if len(separator) != 1:
            parser.error(f"--csv-separator must be one character, got {args.csv_separator!r}")
        description.update(img_key=args.csv_img_key, caption_key=args.csv_caption_key, separator=separator)
        return description, csv_records(paths["csv"], args.csv_img_key, args.csv_caption_key, separator)
    if args.source == "laion":
        return description, laion_records(paths["filelist"])
    return description, folder_records(paths["folder"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", required=True, choices=("coco_karpathy", "csv", "laion", "folder"))
    parser.add_argument("--annotations", type=Path, help="coco_karpathy: the split's JSON file")
    parser.add_argument("--image-root", type=Path, help="coco_karpathy: folder the image paths are relative to")
    parser.add_argument("--csv", type=Path, help="csv: the CSV file")
    parser.add_argument("--csv-img-key", default="filepath", help="csv: image path column")
    parser.add_argument("--csv-caption-key", default="title", help="csv: caption column")
    parser.add_argument("--csv-separator", default="\t", help="csv: column separator (default: tab)")
    parser.add_argument("--filelist", type=Path, help="laion: file listing the part files, one per line")
    parser.add_argument("--folder", type=Path, help="folder: images with same-named .txt captions")
    parser.add_argument("--output", required=True, type=Path, help="directory for the shards and manifest.json")
    parser.add_argument("--shard-size", required=True, type=int, help="samples per shard")
    parser.add_argument("--max-side", type=int, help="re-encode images longer than this many pixels, resized to it")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of re-encoded images")
    parser.add_argument("--prefix", default="shard", help="shard file names: PREFIX-000000.tar")
    parser.add_argument("--overwrite", action="store_true", help="discard a different pack in --output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    source, records = _source_from_args(parser, args)
    try:
        manifest = pack(
            records, args.output, args.shard_size, source,
            max_side=args.max_side, quality=args.quality, prefix=args.prefix, overwrite=args.overwrite,
        )
    except (ManifestMismatchError, ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 1
    skipped = manifest["skipped"]
    reasons = ", ".join(f"{reason}={count}" for reason, count in skipped.items())
    print(
        f"packed {manifest['total']} samples into {len(manifest['shards'])} shards in {args.output}; "
        f"skipped {sum(skipped.values())}" + (f" ({reasons})" if reasons else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
