"""The files a transformers tokenizer keeps in a checkpoint folder, and copying them between folders
(converted checkpoints, training outputs and exports carry their tokenizer with them)."""

import shutil
from pathlib import Path
from typing import List

# The slow and fast files of the BERT family's and SigLIP's tokenizers (BPE, SentencePiece, WordPiece; T5's
# spiece.model, Gemma's tokenizer.model), as transformers' save_pretrained writes them.
TOKENIZER_FILES = ("vocab.json", "merges.txt", "sentencepiece.bpe.model", "vocab.txt", "spiece.model",
                   "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer_files(source: Path, output: Path) -> List[str]:
    """Copy the TOKENIZER_FILES that folder `source` has into `output`; the names copied."""
    source, output = Path(source), Path(output)
    copied = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    if copied and source.resolve() != output.resolve():
        output.mkdir(parents=True, exist_ok=True)
        for name in copied:
            shutil.copyfile(source / name, output / name)
    return copied
