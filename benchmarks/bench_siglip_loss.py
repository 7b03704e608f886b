"""The sigmoid loss (SigLIP) on 2 CPU processes: time and peak memory of forward + backward against the
global batch, beside open_clip's SigLipLoss in the same run.

    python benchmarks/bench_siglip_loss.py --batches 4096 16384 65536 --peer ../reference/.venv/bin/python

Each global batch B is split evenly over --procs processes (`paddle.distributed.launch`, gloo); each
holds random normalised image and text features [B / procs, --dim] and runs one forward + backward
of the loss. Memory is the growth of each process's peak resident set over its resident set before
the features were made (features, gradients, logits, communication buffers), the largest over the
processes; time is the slowest process's. The peer runs open_clip's SigLipLoss
(benchmarks/open_clip_siglip_loss.py, torch.distributed with gloo) on the same sizes afterwards, never
at the same time, each process capped at --peer-memory-gib of address space so that an out-of-memory
peer fails alone instead of calling the kernel's OOM killer.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEER_SCRIPT = HERE / "open_clip_siglip_loss.py"


def resident_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024


def run_worker(args) -> None:
    """One process of one measurement: writes {"seconds", "memory_mib"} to args.out/rank<r>.json."""
    from paddlemix.utils.cpu_process import prepare_cpu_process

    prepare_cpu_process()
    import paddle
    import paddle.distributed as dist
    import paddle.nn.functional as F

    from paddlemix.models.siglip_loss import SigLipLoss

    paddle.set_device("cpu")
    dist.init_parallel_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    paddle.base.core.set_num_threads(args.threads)
    loss_fn = SigLipLoss(exchange=args.exchange, chunk=args.chunk)
    rows = args.batch // world
    dist.barrier()
    before = resident_mib("VmRSS")
    paddle.seed(rank)
    image = F.normalize(paddle.randn([rows, args.dim]), axis=-1)
    text = F.normalize(paddle.randn([rows, args.dim]), axis=-1)
    image.stop_gradient = text.stop_gradient = False
    scale, bias = paddle.to_tensor([10.0], stop_gradient=False), paddle.to_tensor([-10.0], stop_gradient=False)
    dist.barrier()
    start = time.perf_counter()
    loss = loss_fn(image, text, scale, bias)
    loss.backward()
    float(loss)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "memory_mib": resident_mib("VmHWM") - before}
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()


def measure_paddlemix(args, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])))
        env.pop("CUDA_VISIBLE_DEVICES", None)  # else the CPU launcher looks for a GPU named ""
        command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(args.procs),
                   "--log_dir", str(Path(tmp) / "log"), __file__, "--worker", "--out", tmp, "--batch", str(batch),
                   "--dim", str(args.dim), "--chunk", str(args.chunk), "--exchange", args.exchange,
                   "--threads", str(args.threads)]
        finished = subprocess.run(command, env=env, capture_output=True, text=True)
        if finished.returncode != 0:
            logs = "\n".join(path.read_text(errors="replace")[-2000:] for path in sorted(Path(tmp, "log").glob("*")))
            return {"error": f"exit {finished.returncode}: {logs[-3000:]}"}
        return _slowest([json.loads(path.read_text()) for path in Path(tmp).glob("rank*.json")])


def measure_open_clip(args, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [args.peer, str(PEER_SCRIPT), "--out", tmp, "--batch", str(batch), "--dim", str(args.dim),
                   "--procs", str(args.procs), "--threads", str(args.threads),
                   "--memory-gib", str(args.peer_memory_gib)]
        peer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            _, stderr = peer.communicate(timeout=args.peer_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(peer.pid, signal.SIGKILL)  # the launcher and its rank processes
            peer.communicate()
            return {"error": f"no result within {args.peer_timeout} s"}
        results = [json.loads(path.read_text()) for path in Path(tmp).glob("rank*.json")]
        errors = [r["error"] for r in results if "error" in r]
        if errors or peer.returncode != 0 or len(results) < args.procs:
            return {"error": errors[0] if errors else f"exit {peer.returncode}: {stderr[-500:]}"}
        return _slowest(results)


def _slowest(results) -> dict:
    return {"seconds": max(r["seconds"] for r in results), "memory_mib": max(r["memory_mib"] for r in results)}


def _cell(result: dict) -> str:
    if "error" in result:
        return f"{'failed: ' + result['error'].splitlines()[-1][:60]:>34}"
    return f"{result['seconds']:9.2f} s {result['memory_mib']:11,.0f} MiB"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[4096, 16384, 65536], help="global batch sizes")
    parser.add_argument("--procs", type=int, default=2, help="processes the global batch is split over")
    parser.add_argument("--dim", type=int, default=768, help="feature width (ViT-B-16-SigLIP: 768)")
    parser.add_argument("--chunk", type=int, default=1024, help="paddlemix: texts per logits chunk")
    parser.add_argument("--exchange", default="bidir", help="paddlemix: bidir, shift or gather")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--peer", default=None, help="python of the open_clip reference venv")
    parser.add_argument("--peer-memory-gib", type=float, default=10.0, help="address-space cap per peer process")
    parser.add_argument("--peer-timeout", type=int, default=1800, help="seconds before a peer run is given up")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    from timing import machine_line

    print(f"{machine_line(args.threads)} per process, {args.procs} processes, features {args.dim} wide, float32")
    print(f"SigLIP loss forward + backward; paddlemix: {args.exchange} exchange, chunks of {args.chunk} texts; "
          "memory: peak RSS growth of the largest process")
    print(f"{'global batch':>12}  {'paddlemix':>34}  {'open_clip SigLipLoss (bidir)':>34}")
    for batch in args.batches:
        ours = measure_paddlemix(args, batch)
        peer = measure_open_clip(args, batch) if args.peer else None
        print(f"{batch:>12,}  {_cell(ours)}  {_cell(peer) if peer else '':>34}", flush=True)


if __name__ == "__main__":
    main()
