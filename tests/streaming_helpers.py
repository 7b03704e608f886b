"""What the streaming-dataset tests share: reading a finite stream back in this process."""

from collections import Counter


def read_epochs(dataset):
    """(captions in order, summed skipped counts) of a finite dataset read in this process."""
    captions, skipped = [], Counter()
    for sample in dataset:
        assert sample["image"].dtype == "float32" and sample["image"].shape == (3, 8, 8)
        captions.append(sample["caption"])
        skipped.update(sample["skipped"])
    return captions, skipped
