"""Throughput of `imagegen batch`: 64 jobs through the command (batched pipeline calls) against a loop of single
pipeline calls in one process, and the Ray engine's overhead against the plain (local) engine on the same jobs.

Each figure is a fresh process timed end to end, as a user runs it: Python start, torch import, one model load, the
images (written with their manifest for the command). Same torch threads everywhere (`--threads`; default: torch's
own default, all physical cores, which is also the command's default for one process) and the same seeds (job i
draws seed i). Ray: a local instance is started first and not counted (a cluster that is already up); the command
connects to it with --address and runs one worker of --ray-threads threads (default 1, Ray's one CPU per worker),
timed against the local engine at the same threads; the two runs' files are compared pixel for pixel. An untimed
model load first warms the file cache.

Run alone:  python benchmarks/batch_throughput.py [--jobs 64] [--model shapes] [--batch-size 16] [--threads T] [--repeats 3]
"""
import argparse
import os
import shutil
import statistics
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


def batch_command(jobs: Path, out: Path, args, *extra, threads: int | None = None) -> list[str]:
    return [sys.executable, "-m", "imagegen", "batch", str(jobs), "--out", str(out), "--model", args.model,
            "--batch-size", str(args.batch_size), "--threads", str(threads or args.threads), "--no-progress", *extra]


def same_pixels(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.png"))
    return names == sorted(p.name for p in b.glob("*.png")) and all(
        np.array_equal(np.asarray(Image.open(a / n)), np.asarray(Image.open(b / n))) for n in names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's default (physical cores)")
    parser.add_argument("--ray-threads", type=int, default=1, help="threads of the Ray worker and of the local run it "
                        "is compared with (default 1: Ray's default of one CPU per worker)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating loop/batch runs (medians are reported)")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()
    print(f"{args.jobs} jobs, model {args.model} at its defaults, batch size {args.batch_size}, {args.threads} torch "
          f"thread(s), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="batch-throughput-"))
    jobs = work / "jobs.txt"
    jobs.write_text("\n".join(prompts(args.jobs)) + "\n", encoding="utf-8")

    subprocess.run([sys.executable, "-c", f"import imagegen; imagegen.load_pipeline({args.model!r})"], check=True)

    loops, locals_ = [], []
    for repeat in range(args.repeats):  # alternating, so a slow spell of the machine hits both
        loops.append(timed(f"loop of single calls (1 load + {args.jobs} calls)",
                           [sys.executable, "-c", LOOP, args.model, str(args.threads), str(jobs)]))
        shutil.rmtree(work / "local", ignore_errors=True)
        locals_.append(timed("imagegen batch, local engine", batch_command(jobs, work / "local", args)))
    loop, local = statistics.median(loops), statistics.median(locals_)
    ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(loops, locals_))
    print(f"images/s (medians of {args.repeats}): loop {args.jobs / loop:.2f}, imagegen batch {args.jobs / local:.2f}; "
          f"batched / loop = {loop / local:.2f}x (each run: {ratios})", flush=True)
    if args.skip_ray:
        shutil.rmtree(work)
        print(f"RESULT: imagegen batch / loop of single calls = {loop / local:.2f}x images/s (expected >= 2.5)")
        return 0

    # Ray against the plain engine at Ray's own default of one thread per worker (one worker per free CPU), so both
    # run the same work on the same threads and the difference is the engine.
    threads = args.ray_threads
    plain = local if threads == args.threads else timed(f"imagegen batch, local engine, --threads {threads}",
                                                          batch_command(jobs, work / "local-ray-threads", args,
                                                                        threads=threads))
    import ray

    start, ray_dir = time.perf_counter(), tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=ray_dir)
    print(f"ray.init, a local instance (not counted): {time.perf_counter() - start:.1f} s", flush=True)
    try:
        address = ray.get_runtime_context().gcs_address
        on_ray = timed(f"imagegen batch --engine ray --workers 1 --threads {threads}",
                       batch_command(jobs, work / "ray", args, "--engine", "ray", "--workers", "1", "--address",
                                     address, threads=threads))
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
    reference = work / ("local" if threads == args.threads else "local-ray-threads")
    print(f"images/s: ray {args.jobs / on_ray:.2f}; ray / local at {threads} thread(s) = {on_ray / plain:.2f}x; same "
          f"pixels as the local engine: {same_pixels(reference, work / 'ray')}", flush=True)
    print(f"RESULT: imagegen batch / loop of single calls = {loop / local:.2f}x images/s (expected >= 2.5); Ray / "
          f"local engine = {on_ray / plain:.2f}x time (expected <= 1.3)")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
