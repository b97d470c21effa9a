"""Generation latency of a model at its preset's default settings (the embedded `shapes` model by default): one
image, and a batch of 8. A latency report, not a comparison (the pipeline-vs-diffusers ratio is
pipeline_overhead.py's).

Run alone:  python benchmarks/latency.py [--model shapes] [--repeats 5]
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import imagegen  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pipe = imagegen.load_pipeline(args.model)
    prior, decoder = pipe.model.prior_defaults, pipe.model.decoder_defaults
    results = {}
    for n in (1, 8):
        pipe("a red circle", num_images=n, seed=0, progress=False)  # warm-up
        times = []
        for r in range(args.repeats):
            start = time.perf_counter()
            pipe("a red circle", num_images=n, seed=r, progress=False)
            times.append(time.perf_counter() - start)
        results[n] = statistics.median(times)
    print(f"model {args.model}: {decoder.width}x{decoder.height}, {prior.steps} prior steps ({prior.scheduler}) + "
          f"{decoder.steps} decoder steps ({decoder.scheduler}), guidance {prior.guidance}/{decoder.guidance}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"RESULT one image: {results[1]:.3f} s; batch of 8: {results[8]:.3f} s ({results[8] / 8:.3f} s/image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
