"""Generation latency of a model at its preset's default settings (the embedded `shapes` model by default): one
image, and a batch of 8. With `--baseline OTHER`, the other model (e.g. the previous weights, as a preset on
$IMAGEGEN_MODEL_PATH) is timed in the same run, alternating call by call, and the last line gives the ratios (the
pipeline-vs-diffusers ratio is pipeline_overhead.py's).

Run alone:  python benchmarks/latency.py [--model shapes] [--baseline OTHER] [--repeats 5]
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import imagegen  # noqa: E402

BATCHES = (1, 8)


def describe(name: str, pipe) -> str:
    prior, decoder = pipe.model.prior_defaults, pipe.model.decoder_defaults
    return (f"model {name}: {decoder.width}x{decoder.height}, {prior.steps} prior steps ({prior.scheduler}) + "
            f"{decoder.steps} decoder steps ({decoder.scheduler}), guidance {prior.guidance}/{decoder.guidance}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--baseline", help="a second model timed alongside, alternating call by call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    names = [args.model] + ([args.baseline] if args.baseline else [])
    pipes = {name: imagegen.load_pipeline(name) for name in names}
    times = {(name, n): [] for name in names for n in BATCHES}
    for n in BATCHES:
        for pipe in pipes.values():
            pipe("a red circle", num_images=n, seed=0, progress=False)  # warm-up
        for r in range(args.repeats):
            for name in (names if r % 2 == 0 else names[::-1]):  # alternate who goes first
                start = time.perf_counter()
                pipes[name]("a red circle", num_images=n, seed=r, progress=False)
                times[name, n].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"{torch.get_num_threads()} threads, median of {args.repeats}")
    for name, pipe in pipes.items():
        print(describe(name, pipe))
        print(f"  one image: {median[name, 1]:.3f} s; batch of 8: {median[name, 8]:.3f} s "
              f"({median[name, 8] / 8:.3f} s/image)")
    if args.baseline:
        ratios = {n: median[args.model, n] / median[args.baseline, n] for n in BATCHES}
        print(f"RESULT latency {args.model} / {args.baseline}: one image {ratios[1]:.3f}x, batch of 8 {ratios[8]:.3f}x")
    else:
        print(f"RESULT one image: {median[args.model, 1]:.3f} s; batch of 8: {median[args.model, 8]:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
