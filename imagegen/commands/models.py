"""`imagegen models`: the model presets along the search order, each with its source (no torch: answers at once)."""
from __future__ import annotations

import argparse
import json

from ..presets import DEFAULT_PRESET
from .registry import command


def add_models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="preset files or folders of presets to search first (then $IMAGEGEN_MODEL_PATH, "
                        "./configs/models, the per-user folder, the package)")
    p.add_argument("--json", action="store_true", help="one JSON object per preset")


@command("models", "list the model presets and where they were found", add_models_arguments)
def run_models(args) -> int:
    from .. import locations
    from ..presets import found_presets

    found = found_presets(args.paths)
    if args.json:
        for f in found:
            p = f.preset
            print(json.dumps({"name": p.name, "prior": p.prior, "decoder": p.decoder, "available": p.availability(),
                              "description": p.description, "source": f.source, "path": p.source,
                              "shadows": [{"path": str(s.path), "source": s.source} for s in f.shadows]}))
        return 0
    width = max([len(f.preset.name) for f in found] + [4])
    print(f"{'NAME':<{width}}  {'SOURCE':<8} {'STATUS':<8} DESCRIPTION")
    for f in found:
        p = f.preset
        default = " (default)" if p.name == DEFAULT_PRESET else ""
        print(f"{p.name:<{width}}  {f.source:<8} {p.availability():<8} {p.description}{default}")
        for s in f.shadows:
            print(f"{'':<{width}}  {s.source:<8} {'-':<8} shadowed by {f.source} {p.source}: {s.path}")
    print(locations.search_order_text(locations.MODELS, args.paths))
    return 0
