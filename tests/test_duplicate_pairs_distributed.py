"""Masked ClipLoss across 2 CPU processes equals one process on the global batch: pairs that share an
image or a caption across ranks are left out too, in every (local_loss, gather_with_grad) mode,
with equal and unequal row counts per rank.

One `paddle.distributed.launch` (gloo) runs every case of tests/distributed/duplicate_pairs_worker.py.
"""

from pathlib import Path

import numpy as np
import pytest

from paddlemix.models.loss import ClipLoss

from distributed_helpers import launch_workers, load_worker

WORKER_PATH = Path(__file__).resolve().parent / "distributed" / "duplicate_pairs_worker.py"
WORLD_SIZE = 2

worker = load_worker(WORKER_PATH)


@pytest.fixture(scope="module")
def rank_outputs(tmp_path_factory):
    """Launch the workers once; {(case, split): [npz of rank 0, npz of rank 1]}."""
    out_dir = launch_workers(WORKER_PATH, WORLD_SIZE, tmp_path_factory.mktemp("duplicate_pairs_distributed"))
    return {(case, split): [dict(np.load(out_dir / f"{case}.{split}.rank{rank}.npz")) for rank in range(WORLD_SIZE)]
            for case in worker.VALID_CASES for split in worker.SPLITS}


def single_process(with_keys: bool):
    """(loss, {parameter name: gradient}) of the whole global batch in this process."""
    model = worker.build_model()
    batch = worker.global_batch()
    keys = {name: batch[name] for name in ("image_keys", "caption_keys")} if with_keys else {}
    loss = ClipLoss()(*worker.encode(model, batch["image"], batch["input_ids"]), **keys)
    loss.backward()
    return float(loss), worker.gradients(model)


@pytest.fixture(scope="module")
def reference():
    return single_process(with_keys=True)


@pytest.mark.parametrize("split", list(worker.SPLITS))
@pytest.mark.parametrize("case", list(worker.VALID_CASES))
def test_two_rank_masked_loss_and_gradients_equal_one_process(case, split, rank_outputs, reference):
    reference_loss, reference_grads = reference
    ranks = rank_outputs[(case, split)]

    # with local_loss each rank reports its share; the shares average to the global loss
    np.testing.assert_allclose(np.mean([float(rank["loss"]) for rank in ranks]), reference_loss, rtol=1e-10)
    for name, expected in reference_grads.items():
        for rank, outputs in enumerate(ranks):
            np.testing.assert_allclose(outputs[name], expected, rtol=1e-9, atol=1e-12,
                                       err_msg=f"{case} {split} rank {rank} {name}")


def test_the_comparison_can_fail_masking_changes_the_gradients(reference):
    unmasked_loss, unmasked_grads = single_process(with_keys=False)
    assert unmasked_loss > reference[0] + 0.1
    assert not np.allclose(unmasked_grads["logit_scale"], reference[1]["logit_scale"], rtol=1e-3)
