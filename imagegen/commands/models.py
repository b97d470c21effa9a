"""`imagegen models`: the model presets (no torch: answers at once)."""
from __future__ import annotations

import argparse
import json

from ..presets import DEFAULT_PRESET
from .registry import command


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
