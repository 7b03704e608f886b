"""Class names and prompt templates for zero-shot classification, as text files beside this module.

Each file holds one entry per line; lines starting with "#" are comments (the source note).
"""

import os
from pathlib import Path
from typing import Tuple, Union

_HERE = Path(__file__).resolve().parent


def load_metadata_file(path: Union[str, os.PathLike]) -> Tuple[str, ...]:
    """The entries of a class-name or template file, in file order, comments dropped.

    A blank line raises: in a class-name file it would shift every later name to the wrong label.
    """
    entries = []
    for line_number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("#"):
            continue
        if not line.strip():
            raise ValueError(f"{path}:{line_number}: blank line; every line must be an entry or a # comment")
        entries.append(line)
    return tuple(entries)


# ImageNet-1k class names (index = label) and OpenAI's 80 prompt templates ("{}" = class name).
IMAGENET_CLASSNAMES = load_metadata_file(_HERE / "imagenet_classnames.txt")
OPENAI_IMAGENET_TEMPLATES = load_metadata_file(_HERE / "imagenet_templates.txt")
