"""The peer of bench_siglip_loss.py: open_clip's SigLipLoss, forward + backward, on --procs CPU processes
(torch.distributed, gloo). Run with the reference venv's python; bench_siglip_loss.py calls it.

Each process writes OUT/rank<r>.json: {"seconds", "memory_mib"} (peak RSS growth over the RSS before its
features were made), or {"error": ...} when it ran out of its --memory-gib address space.
"""

import argparse
import json
import os
import resource
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from open_clip.loss import SigLipLoss


def resident_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024


def worker(rank: int, args, port: int) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.procs)
    limit = int(args.memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = Path(args.out) / f"rank{rank}.json"
    loss_fn = SigLipLoss(rank=rank, world_size=args.procs, dist_impl="bidir")
    rows = args.batch // args.procs
    dist.barrier()
    before = resident_mib("VmRSS")
    try:
        generator = torch.Generator().manual_seed(rank)
        image = F.normalize(torch.randn(rows, args.dim, generator=generator), dim=-1).requires_grad_(True)
        text = F.normalize(torch.randn(rows, args.dim, generator=generator), dim=-1).requires_grad_(True)
        scale = torch.tensor(10.0, requires_grad=True)
        bias = torch.tensor(-10.0, requires_grad=True)
        start = time.perf_counter()
        loss = loss_fn(image, text, scale, bias)
        loss.backward()
        float(loss)
        out.write_text(json.dumps({"seconds": time.perf_counter() - start,
                                   "memory_mib": resident_mib("VmHWM") - before}))
    except (RuntimeError, MemoryError) as error:  # torch reports an allocation past the cap as RuntimeError
        out.write_text(json.dumps({"error": f"{type(error).__name__} at a {args.memory_gib:g} GiB cap: "
                                            f"{str(error).splitlines()[0][:200]}"}))
        # a failed exit: torch.multiprocessing.spawn then ends the ranks that wait on this one's messages
        os._exit(1)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch", type=int, required=True, help="global batch")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-gib", type=float, default=10.0)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(worker, args=(args, port), nprocs=args.procs, join=True)


if __name__ == "__main__":
    main()
