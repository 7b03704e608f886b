"""Identity keys of a sample's image and caption, so that the contrastive loss does not take two
pairs that share an image or a caption as negatives of each other.

COCO has about five captions per image, one training row per caption: a batch often holds the same
image more than once, and web data repeats captions ("image", "photo"). Each sample carries
`image_key`, the stable hash of its encoded image bytes (the same for every dataset: file, COCO and
streamed LAION / tar samples alike; two copies of one file under different names are one image),
and the collator adds `caption_keys`, the stable hash of the caption text as the tokenizer gets it.
Batches hold them as int64 [B] tensors under PAIR_KEYS; models.loss.ClipLoss takes them by name.

The hash is blake2b cut to 64 bits, not Python's `hash`, which is salted per process: every rank
and worker must give one image one key. Two different images share a key with probability 2^-64.
"""

import hashlib
from typing import Dict, Sequence

import numpy as np
import paddle

PAIR_KEYS = ("image_keys", "caption_keys")  # batch entries (int64 [B]) that ClipLoss takes by these names


def stable_key(data: bytes) -> int:
    """A signed 64-bit digest of `data`, the same in every process, run and machine."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def image_key(encoded_image: bytes) -> int:
    return stable_key(encoded_image)


def caption_key(caption: str) -> int:
    # surrogatepass: a caption read with errors="surrogateescape" still has a key (such samples are
    # skipped as invalid_utf8 before they get here; the key must never be what raises)
    return stable_key(caption.encode("utf-8", "surrogatepass"))


def collate_pair_keys(samples: Sequence[Dict]) -> Dict[str, np.ndarray]:
    """{"caption_keys": int64 [B]} and, when every sample has an `image_key`, {"image_keys": int64 [B]}
    (a dataset outside paddlemix may not give one: its batches are then masked by caption alone)."""
    keys = {"caption_keys": np.array([caption_key(sample["caption"]) for sample in samples], dtype=np.int64)}
    if all("image_key" in sample for sample in samples):
        keys["image_keys"] = np.array([sample["image_key"] for sample in samples], dtype=np.int64)
    return keys


def pair_keys_of(*batches: Dict) -> Dict:
    """The PAIR_KEYS entries of `batches`, joined in order (the micro-batches of one accumulated batch,
    as their features are joined); only the entries every batch has."""
    names = [name for name in PAIR_KEYS if all(name in batch for batch in batches)]
    if len(batches) == 1:
        return {name: batches[0][name] for name in names}
    return {name: paddle.concat([batch[name] for batch in batches]) for name in names}
