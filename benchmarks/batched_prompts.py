"""Eight different prompts in one pipeline call (a heterogeneous batch, each prompt with its own seed) against eight
separate calls, on the same model, settings and seeds, measured side by side in one run; also the largest pixel
difference between the two (same noise, so only float rounding may differ).

Run alone:  python benchmarks/batched_prompts.py [--model shapes] [--repeats 3]
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import imagegen  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green star", "a yellow triangle", "a white cross",
           "a large purple circle at the top", "a small orange square on a black background", "a cyan star at the left"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pipe = imagegen.load_pipeline(args.model)
    seeds = list(range(100, 100 + len(PROMPTS)))
    pipe(PROMPTS, seed=seeds, progress=False)  # warm-up of both shapes
    pipe(PROMPTS[0], seed=seeds[0], progress=False)
    batched_times, separate_times = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        start = time.perf_counter()
        batched = pipe(PROMPTS, seed=seeds, progress=False)
        batched_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        separate = [pipe(p, seed=s, progress=False) for p, s in zip(PROMPTS, seeds)]
        separate_times.append(time.perf_counter() - start)
    difference = np.abs(batched.pixels - np.concatenate([r.pixels for r in separate])).max()
    batch, alone = statistics.median(batched_times), statistics.median(separate_times)
    prior, decoder = pipe.model.prior_defaults, pipe.model.decoder_defaults
    print(f"model {args.model}: {decoder.width}x{decoder.height}, {prior.steps}+{decoder.steps} steps, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"one call of {len(PROMPTS)} prompts: {batch:.3f} s ({batch / len(PROMPTS):.3f} s/image); "
          f"{len(PROMPTS)} calls: {alone:.3f} s ({alone / len(PROMPTS):.3f} s/image)")
    print(f"RESULT batched/separate wall time {batch / alone:.3f}; max pixel difference {difference * 255:.3f}/255")
    return 0


if __name__ == "__main__":
    sys.exit(main())
