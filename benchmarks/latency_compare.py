"""Latency of candidate default settings against the model's current defaults, measured interleaved in one run (so a
loaded machine slows both alike): one image and a batch of 8 of "a red circle", as benchmarks/latency.py does.

Run alone:  python benchmarks/latency_compare.py --prior '{"guidance": 2}' --decoder '{"guidance_start": 0.3}'
            [--model shapes] [--repeats 5]
"""
import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import imagegen  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prior", default="{}", help="JSON overrides of the prior defaults")
    parser.add_argument("--decoder", default="{}", help="JSON overrides of the decoder defaults")
    args = parser.parse_args()
    pipe = imagegen.load_pipeline(args.model)
    today = (pipe.model.prior_defaults, pipe.model.decoder_defaults)
    candidate = (replace(today[0], **json.loads(args.prior)), replace(today[1], **json.loads(args.decoder)))
    for prior, decoder in (today, candidate):
        prior.validate()
        decoder.validate()
    times = {(which, n): [] for which in ("today", "candidate") for n in (1, 8)}
    for n in (1, 8):
        for prior, decoder in (today, candidate):  # warm-up
            pipe("a red circle", num_images=n, seed=0, prior=prior, decoder=decoder, progress=False)
        for r in range(args.repeats):
            for which, (prior, decoder) in (("today", today), ("candidate", candidate))[::1 if r % 2 else -1]:
                start = time.perf_counter()
                pipe("a red circle", num_images=n, seed=r, prior=prior, decoder=decoder, progress=False)
                times[which, n].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"model {args.model}; candidate: prior {args.prior}, decoder {args.decoder}; median of {args.repeats}, "
          "interleaved")
    for n in (1, 8):
        ratio = median["candidate", n] / median["today", n]
        print(f"RESULT {n} image{'s' if n > 1 else ''}: today {median['today', n]:.3f} s, candidate "
              f"{median['candidate', n]:.3f} s ({ratio - 1:+.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
