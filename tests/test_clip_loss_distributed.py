"""ClipLoss across 2 CPU processes gives the gradients of one process on the global batch.

One `paddle.distributed.launch` (gloo) runs every case of tests/distributed/clip_loss_worker.py;
the reference is the same model and batch computed here with world_size 1.
"""

from pathlib import Path

import numpy as np
import pytest

from paddlemix.models.loss import ClipLoss

from distributed_helpers import launch_workers, load_worker

WORKER_PATH = Path(__file__).resolve().parent / "distributed" / "clip_loss_worker.py"
WORLD_SIZE = 2

worker = load_worker(WORKER_PATH)


@pytest.fixture(scope="module")
def rank_outputs(tmp_path_factory):
    """Launch the workers once; return {case: [npz of rank 0, npz of rank 1]}."""
    out_dir = launch_workers(WORKER_PATH, WORLD_SIZE, tmp_path_factory.mktemp("clip_loss_distributed"))
    cases = [(name, split) for name in worker.VALID_CASES for split in worker.SPLITS]
    return {
        case: [dict(np.load(out_dir / f"{case[0]}.{case[1]}.rank{rank}.npz")) for rank in range(WORLD_SIZE)]
        for case in [*cases, (worker.NAIVE_CASE, "even")]
    }


@pytest.fixture(scope="module")
def single_process_reference():
    """(loss, {parameter name: gradient}) of the whole global batch in this process."""
    model = worker.build_model()
    image_features, text_features, scale = worker.encode(model, *worker.global_batch())
    loss = ClipLoss()(image_features, text_features, scale)
    loss.backward()
    return float(loss), worker.gradients(model)


@pytest.mark.parametrize("split", list(worker.SPLITS))
@pytest.mark.parametrize("case", list(worker.VALID_CASES))
def test_two_rank_gradients_equal_single_process_gradients(case, split, rank_outputs, single_process_reference):
    """Also when the ranks hold different numbers of rows (split 'uneven': 5 and 3)."""
    reference_loss, reference_grads = single_process_reference
    ranks = rank_outputs[(case, split)]

    # With local_loss each rank reports its share; the shares average to the global loss.
    mean_loss = np.mean([float(rank["loss"]) for rank in ranks])
    np.testing.assert_allclose(mean_loss, reference_loss, rtol=1e-10)
    for name, expected in reference_grads.items():
        for rank, outputs in enumerate(ranks):
            np.testing.assert_allclose(
                outputs[name], expected, rtol=1e-9, atol=1e-12, err_msg=f"{case} {split} rank {rank} {name}"
            )


def test_open_clip_gather_without_grad_shrinks_tower_gradients(rank_outputs, single_process_reference):
    """Proof that the comparison above can fail: open_clip's plain all_gather without the
    world_size factor leaves every tower gradient at 1/world_size after averaging."""
    _, reference_grads = single_process_reference
    naive_grads = rank_outputs[(worker.NAIVE_CASE, "even")][0]

    for name, expected in reference_grads.items():
        if name == "logit_scale":
            np.testing.assert_allclose(naive_grads[name], expected, rtol=1e-9)
        else:
            np.testing.assert_allclose(naive_grads[name], expected / WORLD_SIZE, rtol=1e-9, atol=1e-12)
