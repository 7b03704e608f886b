"""SigLipLoss across 2 and 3 CPU processes gives the gradients of one process on the global batch.

One `paddle.distributed.launch` (gloo) per world size runs every case of
tests/distributed/siglip_loss_worker.py: the texts passed both ways around the ring (bidir), one way
(shift) or all-gathered (gather), on equal and unequal per-rank batches, with and without the
trainer's gradient accumulation, and with pair keys shared across ranks. The reference is the same
model and batch computed here in one process.
"""

from pathlib import Path

import numpy as np
import pytest

from paddlemix.models.loss_registry import training_loss
from paddlemix.models.siglip_loss import SigLipLoss

from distributed_helpers import launch_workers, load_worker

WORKER_PATH = Path(__file__).resolve().parent / "distributed" / "siglip_loss_worker.py"
TOLERANCE = 1e-10  # float64: the ring sums the same terms in another order

worker = load_worker(WORKER_PATH)


@pytest.fixture(scope="module", params=[2, 3], ids=["2_processes", "3_processes"])
def launched(request, tmp_path_factory):
    """(world size, {(case, split): [npz of each rank]}) from one launch."""
    world = request.param
    out_dir = launch_workers(WORKER_PATH, world, tmp_path_factory.mktemp(f"siglip_{world}"))
    outputs = {(case, split): [dict(np.load(out_dir / f"{case}.{split}.rank{rank}.npz")) for rank in range(world)]
               for case in worker.CASES for split in worker.SPLITS[world]}
    return world, outputs


def single_process(rows: int, with_keys: bool):
    """(loss, {parameter: gradient}) of the global batch of `rows` pairs in this process."""
    model = worker.build_model()
    images, texts, caption_keys = worker.global_batch(rows)
    keys = {"caption_keys": caption_keys} if with_keys else {}
    loss = training_loss(SigLipLoss(world_size=1), model(image=images, input_ids=texts), **keys)
    loss.backward()
    return float(loss), worker.gradients(model)


@pytest.mark.parametrize("case", list(worker.CASES))
def test_siglip_loss_on_several_processes_equals_one_process_on_the_global_batch(launched, case):
    world, outputs = launched
    with_keys = worker.CASES[case][2]
    for split, rows in worker.SPLITS[world].items():
        reference_loss, reference_grads = single_process(sum(rows), with_keys)
        ranks = outputs[(case, split)]
        # each rank's loss is its images' share, world_size-weighted: their mean is the global loss
        assert np.mean([float(rank["loss"]) for rank in ranks]) == pytest.approx(reference_loss, rel=TOLERANCE)
        for rank, grads in enumerate(ranks):
            for name, expected in reference_grads.items():
                np.testing.assert_allclose(grads[name], expected, rtol=0, atol=TOLERANCE * max(1, abs(expected).max()),
                                           err_msg=f"{case}/{split} rank {rank}: {name}")


def test_pair_keys_change_the_loss_so_the_keys_case_checks_them():
    """The keyed case would pass vacuously if the keys left the loss unchanged: they remove negatives,
    whose terms are small at logit bias -10 (here 8e-4 of the loss), but 1e7 times the tolerance."""
    rows = sum(worker.SPLITS[3]["uneven"])
    keyed, plain = single_process(rows, True)[0], single_process(rows, False)[0]
    assert keyed < plain and keyed != pytest.approx(plain, rel=1e-4)
