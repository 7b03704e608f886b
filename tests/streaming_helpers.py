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


def take_batches(loader, count):
    """The next `count` batches of `loader` as numpy arrays ({"image", "input_ids"}), the loader then paused
    (its dataloader workers shut down) as a killed run leaves it."""
    batches = iter(loader)
    taken = [{key: value.numpy() for key, value in next(batches).items()} for _ in range(count)]
    batches.close()
    return taken
