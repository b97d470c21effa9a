"""What sampling alone does for the embedded `shapes` model: prompt adherence, short prompts and seed diversity under
several prior/decoder settings (guidance, guidance interval, guidance rescale, prior noise), read by the pixel oracle.

Per setting: `imagegen eval`'s adherence on --pairs grammar prompt x seed pairs (3 seeds a prompt, prompt draw
--seed); the short prompts "a {colour} {shape}" (all 40) x --short-seeds seeds: the share fully right, and the
normalized entropy of what they leave free (background, size, position); and "a {shape}" (5) x 8 seeds for the
colour as well. An exploration table: confirm a winner with `imagegen eval` (>= 300 pairs, --seed 0 and 1) and
`imagegen eval --diversity`.

Run alone:  python benchmarks/sampling_sweep.py [--pairs 99] [--short-seeds 4] [--only NAME ...] [--model M]
"""
import argparse
import json
import os
import sys
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import imagegen  # noqa: E402
from imagegen.data import captions, shapes  # noqa: E402
from imagegen.evaluation import adherence, diversity, oracle  # noqa: E402

# name -> (prior overrides, decoder overrides)
SETTINGS = {
    "defaults": ({}, {}),
    "prior g1": ({"guidance": 1.0}, {}),
    "prior g2": ({"guidance": 2.0}, {}),
    "dec interval .2-1": ({}, {"guidance_start": 0.2}),
    "dec interval .3-1": ({}, {"guidance_start": 0.3}),
    "dec interval .2-.8": ({}, {"guidance_start": 0.2, "guidance_stop": 0.8}),
    "prior interval .3-1": ({"guidance_start": 0.3}, {}),
    "dec rescale .7": ({}, {"guidance_rescale": 0.7}),
    "prior noise 1.3": ({"noise": 1.3}, {}),
}


def measure(pipe, prior, decoder, pairs: int, short_seeds: int, seed: int) -> dict:
    started = time.perf_counter()
    grammar = adherence.grammar_prompts(pairs // 3, seed)
    report, _ = adherence.evaluate(pipe, grammar, 3, seed, prior=prior, decoder=decoder, progress=False)
    short = adherence.short_prompts(40, 0)
    short_report, short_images = adherence.evaluate(pipe, short, short_seeds, 0, prior=prior, decoder=decoder,
                                                    progress=False)
    free = [(captions.caption_from({"shape": s}), {"shape": s}) for s in shapes.SHAPES]
    free_results = adherence.generate_all(pipe, [p for p, _ in free], 8, 10_000, prior=prior, decoder=decoder,
                                          progress=False)
    readings = [oracle.read_image(image) for image in short_images]
    by_prompt = [readings[j * short_seeds:(j + 1) * short_seeds] for j in range(len(short))]
    by_prompt += [[oracle.read_image(image) for image in result.images] for result in free_results]
    spread = diversity.measure(by_prompt, short + free)
    return {"accuracy": report.accuracy, "all": report.all_correct, "no_shape": report.no_shape,
            "short_right": short_report.all_correct, "short_images": short_report.pairs,
            "entropy": {name: stats["normalized_entropy"] for name, stats in spread.attributes.items()},
            "invisible": spread.invisible, "seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=99)
    parser.add_argument("--short-seeds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="the grammar prompt draw")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"some of: {', '.join(SETTINGS)}")
    parser.add_argument("--set", nargs=3, action="append", metavar=("NAME", "PRIOR_JSON", "DECODER_JSON"),
                        help='an extra setting, e.g. --set mine \'{"guidance": 2}\' \'{"guidance_start": 0.2}\'')
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--model", default="shapes", help="a preset name or a model folder (default shapes)")
    args = parser.parse_args()
    settings = {**SETTINGS, **{name: (json.loads(p), json.loads(d)) for name, p, d in args.set or []}}
    names = args.only or ([name for name, *_ in args.set] if args.set else list(settings))
    pipe = imagegen.load_pipeline(args.model)
    rows = {}
    header = (f"{'setting':<22} {'colour':>6} {'shape':>6} {'bg':>6} {'size':>6} {'pos':>6} {'all':>6} "
              f"{'short':>6} {'H bg':>5} {'H size':>6} {'H pos':>5} {'H col':>5} {'invis':>6} {'s':>5}")
    print(header, flush=True)
    for name in names:
        p, d = settings[name]
        prior, decoder = replace(pipe.model.prior_defaults, **p), replace(pipe.model.decoder_defaults, **d)
        row = rows[name] = measure(pipe, prior, decoder, args.pairs, args.short_seeds, args.seed)
        a, h = row["accuracy"], row["entropy"]
        print(f"{name:<22} {a['colour']:6.1%} {a['shape']:6.1%} {a['background']:6.1%} {a['size']:6.1%} "
              f"{a['position']:6.1%} {row['all']:6.1%} {row['short_right']:6.1%} {h['background']:5.2f} "
              f"{h['size']:6.2f} {h['position']:5.2f} {h['colour']:5.2f} {row['invisible']:6.1%} "
              f"{row['seconds']:5.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
