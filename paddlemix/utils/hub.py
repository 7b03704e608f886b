"""Where paddlemix keeps downloaded files (`$PPMIX_HOME`), and downloading them atomically with an
offline-friendly error. The lowest layer: models, datasets and the fused-op builds all use it."""

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .log import logger

DOWNLOAD_TIMEOUT_S = 30


def ppmix_home() -> Path:
    """The cache root: `$PPMIX_HOME`, default `~/.paddlemix`."""
    return Path(os.environ.get("PPMIX_HOME", Path.home() / ".paddlemix")).expanduser()


def download_file(url: str, destination: Path) -> None:
    """Fetch `url` to `destination` atomically: a broken transfer never leaves a partial file."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=destination.parent, prefix=destination.name, delete=False) as partial:
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                shutil.copyfileobj(response, partial)
        except BaseException:
            os.unlink(partial.name)
            raise
    os.replace(partial.name, destination)


def download_or_explain(url: str, target: Path, explanation: str, error_type=FileNotFoundError) -> None:
    """Download `url` to `target`; offline or failing, raise `error_type` with `explanation` (where to
    put the files instead) and the reason."""
    logger.info("downloading %s to %s", url, target)
    try:
        download_file(url, target)
    except (urllib.error.URLError, OSError) as err:
        raise error_type(f"{explanation} (the download from {url} failed: {err})") from err
