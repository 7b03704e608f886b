"""Where model files live: a local directory, the `$PPMIX_HOME` cache, or the PaddleMIX community URL."""

from pathlib import Path
from typing import Optional

from ..utils.hub import download_or_explain, ppmix_home
from .registry import ARCHITECTURE_ONLY_NAMES, conversion_hint

WEIGHTS_NAME = "model_state.pdparams"
# PaddleMIX publishes its converted checkpoints under this prefix, as <prefix>/<registry name>/<file>:
# its from_pretrained is PaddleNLP's, which downloads BOS_URL_TEMPLATE_WITHOUT_REVISION =
# "https://bj.bcebos.com/paddlenlp" + "/models/community/{repo_id}/{filename}" (paddlenlp/utils/download/
# bos_download.py; also COMMUNITY_MODEL_PREFIX in paddlemix/utils/downloader.py).
COMMUNITY_URL = "https://bj.bcebos.com/paddlenlp/models/community"


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
