"""Where model files live: a local directory, the `$PPMIX_HOME` cache, or the PaddleMIX community URL."""

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from ..utils.log import logger
from .registry import ARCHITECTURE_ONLY_NAMES, conversion_hint

WEIGHTS_NAME = "model_state.pdparams"
# PaddleMIX publishes its converted checkpoints under this prefix, as <prefix>/<registry name>/<file>:
# its from_pretrained is PaddleNLP's, which downloads BOS_URL_TEMPLATE_WITHOUT_REVISION =
# "https://bj.bcebos.com/paddlenlp" + "/models/community/{repo_id}/{filename}" (paddlenlp/utils/download/
# bos_download.py; also COMMUNITY_MODEL_PREFIX in paddlemix/utils/downloader.py).
COMMUNITY_URL = "https://bj.bcebos.com/paddlenlp/models/community"
DOWNLOAD_TIMEOUT_S = 30


def ppmix_home() -> Path:
    """The cache root: `$PPMIX_HOME`, default `~/.paddlemix`."""
    return Path(os.environ.get("PPMIX_HOME", Path.home() / ".paddlemix")).expanduser()


def model_cache_dir(name: str) -> Path:
    return ppmix_home() / "models" / name


def cached_weights_path(name: str) -> Path:
    """Where the weights of registry name `name` are kept: `$PPMIX_HOME/models/<name>/model_state.pdparams`."""
    return model_cache_dir(name) / WEIGHTS_NAME


def weights_url(name: str) -> Optional[str]:
    """PaddleMIX's download URL of registry name `name`'s weights, as its loader forms it from the name;
    None for an architecture name under which nothing is published."""
    if name in ARCHITECTURE_ONLY_NAMES:
        return None
    return f"{COMMUNITY_URL}/{name}/{WEIGHTS_NAME}"


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


class ModelFilesNotFoundError(FileNotFoundError):
    """Neither the cache nor the download provided a model's weights."""


def cached_weights_file(name: str) -> Path:
    """`$PPMIX_HOME/models/<name>/model_state.pdparams`, downloaded from the community URL if absent.

    An architecture name without published weights fails at once (no download) unless converted
    weights are in the cache.
    """
    target = cached_weights_path(name)
    if target.is_file():
        return target
    convert = conversion_hint(name, target.parent)
    url = weights_url(name)
    if url is None:
        raise ModelFilesNotFoundError(
            f"'{name}' is an architecture without published weights, and {target} does not exist. Convert "
            f"{convert} into it, pass a local model directory, or use a published name "
            f"(`python -m paddlemix.cli models` lists them)"
        )
    download_or_explain(
        url,
        target,
        f"cannot get the weights of '{name}': {target} does not exist. Put {WEIGHTS_NAME} in {target.parent} "
        f"(or set $PPMIX_HOME), pass a local model directory instead, or convert {convert}",
        ModelFilesNotFoundError,
    )
    return target
