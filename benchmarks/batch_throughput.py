"""Throughput of `imagegen batch`: 64 jobs through the command (batched pipeline calls) against a loop of single
pipeline calls in one process, and the Ray engine's overhead against the plain (local) engine on the same jobs.

Each figure is a fresh process timed end to end, as a user runs it: Python start, torch import, one model load, the
images (written with their manifest for the command). Same torch threads everywhere (`--threads`, the command's
default 1) and the same seeds (job i draws seed i). Ray: a local instance is started first and not counted (a cluster
that is already up); the command connects to it with --address and runs one worker of the same threads. The local
and Ray files are compared pixel for pixel. An untimed model load first warms the file cache.

Run alone:  python benchmarks/batch_throughput.py [--jobs 64] [--model shapes] [--batch-size 8] [--threads 1]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

COLORS = ["red", "blue", "green", "yellow", "white", "purple", "orange", "black"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "heart"]
PLACES = ["", " at the top", " at the bottom right", " on a blue background", " in the center"]
LOOP = """
import sys, torch, imagegen
model, threads, jobs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(threads)
pipe = imagegen.load_pipeline(model)
for number, text in enumerate(open(jobs, encoding="utf-8").read().splitlines(), 1):
    pipe(text, seed=number, progress=False)  # job `number`: seed = --seed 0 + its id (its line number)
"""


def prompts(count: int) -> list[str]:
    return [f"a {COLORS[i % len(COLORS)]} {SHAPES[i % len(SHAPES)]}{PLACES[i % len(PLACES)]}" for i in range(count)]


def timed(label: str, command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{label} failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = [line for line in done.stdout.splitlines() if line.startswith("batch:")]
    print(f"{label}: {seconds:.1f} s" + (f"   [{summary[0]}]" if summary else ""), flush=True)
    return seconds


def batch_command(jobs: Path, out: Path, args, *extra) -> list[str]:
    return [sys.executable, "-m", "imagegen", "batch", str(jobs), "--out", str(out), "--model", args.model,
            "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--no-progress", *extra]


def same_pixels(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.png"))
    return names == sorted(p.name for p in b.glob("*.png")) and all(
        np.array_equal(np.asarray(Image.open(a / n)), np.asarray(Image.open(b / n))) for n in names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    print(f"{args.jobs} jobs, model {args.model} at its defaults, batch size {args.batch_size}, {args.threads} torch "
          f"thread(s), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="batch-throughput-"))
    jobs = work / "jobs.txt"
    jobs.write_text("\n".join(prompts(args.jobs)) + "\n", encoding="utf-8")

    subprocess.run([sys.executable, "-c", f"import imagegen; imagegen.load_pipeline({args.model!r})"], check=True)

    loop = timed(f"loop of single calls (1 load + {args.jobs} calls)",
                 [sys.executable, "-c", LOOP, args.model, str(args.threads), str(jobs)])
    local = timed("imagegen batch, local engine", batch_command(jobs, work / "local", args))
    print(f"images/s: loop {args.jobs / loop:.2f}, imagegen batch {args.jobs / local:.2f}; "
          f"batched / loop = {loop / local:.2f}x", flush=True)
    if args.skip_ray:
        shutil.rmtree(work)
        return 0

    import ray

    start, ray_dir = time.perf_counter(), tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=ray_dir)
    print(f"ray.init, a local instance (not counted): {time.perf_counter() - start:.1f} s", flush=True)
    try:
        address = ray.get_runtime_context().gcs_address
        on_ray = timed("imagegen batch --engine ray --workers 1",
                       batch_command(jobs, work / "ray", args, "--engine", "ray", "--workers", "1", "--address",
                                     address))
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
    print(f"images/s: ray {args.jobs / on_ray:.2f}; ray / local = {on_ray / local:.2f}x; same pixels as the local "
          f"engine: {same_pixels(work / 'local', work / 'ray')}", flush=True)
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
