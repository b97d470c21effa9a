"""`imagegen models` (no torch: answers at once) and `imagegen train-base`."""
from __future__ import annotations

import argparse
import json

from ..presets import DEFAULT_PRESET
from .registry import command


def add_train_base_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/train/shapes.toml", help="training recipe (TOML)")
    p.add_argument("--out", help="model folder to write, e.g. imagegen/weights/shapes (prior/ and decoder/)")
    p.add_argument("--resume", action="store_true", help="continue the run: skip finished stages, resume the current")
    p.add_argument("--smoke", action="store_true", help="~5 steps per stage, an end-to-end check of the code")


@command("train-base", "train the embedded shapes model from scratch: CLIP -> VAE -> prior -> decoder", add_train_base_arguments)
def run_train_base(args) -> int:
    from ..train.run import main as train_main

    argv = ["--config", args.config] + (["--out", args.out] if args.out else [])
    return train_main(argv + ["--resume"] * args.resume + ["--smoke"] * args.smoke)


def add_models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per preset")


@command("models", "list the model presets", add_models_arguments)
def run_models(args) -> int:
    from ..presets import list_presets

    presets = list_presets()
    if args.json:
        for p in presets:
            print(json.dumps({"name": p.name, "prior": p.prior, "decoder": p.decoder, "available": p.availability(),
                              "description": p.description, "source": p.source}))
        return 0
    width = max([len(p.name) for p in presets] + [4])
    print(f"{'NAME':<{width}}  {'STATUS':<8} DESCRIPTION")
    for p in presets:
        default = " (default)" if p.name == DEFAULT_PRESET else ""
        print(f"{p.name:<{width}}  {p.availability():<8} {p.description}{default}")
    return 0


