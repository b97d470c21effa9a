"""`imagegen lora list|inspect|convert|install`: the adapter files (no torch, but for convert and install)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..presets import DEFAULT_PRESET
from .registry import OneLineParser, command


def add_lora_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="lora_command", metavar="ACTION", parser_class=OneLineParser, required=True)
    listing = sub.add_parser("list", help="the adapters found, with their source ($IMAGEGEN_LORA_PATH, "
                                          "./lora_adapters, the per-user folder, the package)")
    listing.add_argument("paths", nargs="*", metavar="PATH", help="adapter files or folders to search first")
    listing.add_argument("--json", action="store_true")
    inspect = sub.add_parser("inspect", help="every metadata field of one adapter")
    inspect.add_argument("name", help="adapter name or .safetensors path")
    inspect.add_argument("--json", action="store_true")
    convert = sub.add_parser("convert", help="write an adapter in kohya format (lora_unet_/lora_te_ keys)")
    convert.add_argument("name", help="adapter name or .safetensors path")
    convert.add_argument("output", help="the new .safetensors file (must not exist)")
    convert.add_argument("--model", default=None, help=f"the base model whose module names map keys (default {DEFAULT_PRESET})")
    install = sub.add_parser("install", help="copy an adapter file into the per-user folder (validated; never "
                                             "replaces an installed one)")
    install.add_argument("file", metavar="FILE", help="the .safetensors adapter file")
    install.add_argument("--name", default=None, help="the name to install it under (default: the file's name)")


@command("lora", "list, inspect, convert and install LoRA adapter files", add_lora_arguments)
def run_lora(args) -> int:
    from ..lora import files

    if args.lora_command == "list":
        return list_adapters(args, files)
    if args.lora_command == "install":
        return install_adapter(args, files)
    path = files.find(args.name)
    if args.lora_command == "inspect":
        info = files.describe(path).as_dict()
        info["lora_hash"] = files.tensor_hash(path)
        if args.json:
            print(json.dumps(info))
        else:
            for key, value in info.items():
                if key != "metadata":
                    print(f"{key}: {value}")
            for key, value in sorted(info["metadata"].items()):
                print(f"  {key}: {value}")
        return 0
    from ..lora.convert import convert_to_kohya

    print(convert_to_kohya(path, Path(args.output), args.model or DEFAULT_PRESET))
    return 0


def list_adapters(args, files) -> int:
    from .. import locations

    found = files.entries(args.paths)
    rows = []
    for entry in found:
        row = files.describe(entry.path).as_dict()
        del row["metadata"]
        rows.append({**row, "source": entry.source, "shadows": entry.shadow_dicts()})
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'NAME':<16} {'SOURCE':<8} {'COMPONENTS':<22} {'RANK':<26} {'BASE':<10} {'TRIGGERS':<20} {'SIZE':>8}  PATH")
    for r in rows:
        ranks = ",".join(f"{k}={v}" for k, v in r["ranks"].items()) or "?"
        size = f"{r['size_bytes'] / 1024:.0f} KiB"
        print(f"{r['name']:<16} {r['source']:<8} {','.join(r['components']):<22} {ranks:<26} {r['base_model']:<10} "
              f"{','.join(r['trigger_words']):<20} {size:>8}  {r['path']}")
        for s in r["shadows"]:
            print(f"{'':<16} {s['source']:<8} shadowed by {r['source']} {r['path']}: {s['path']}")
    print(locations.search_order_text(locations.LORA, args.paths))
    return 0


def install_adapter(args, files) -> int:
    target = files.install(args.file, args.name)
    print(target)
    name = target.stem
    for entry in files.entries():
        if entry.name == name and entry.path.resolve() != target.resolve():
            print(f"imagegen: note: {entry.source} {entry.path} comes first in the search order, so '{name}' still "
                  f"names that file (install under another --name to use this one by name)", file=sys.stderr)
        elif entry.name == name and entry.shadows:
            shadowed = ", ".join(f"{s['source']} {s['path']}" for s in entry.shadow_dicts())
            print(f"imagegen: note: '{name}' now names this file; it shadows {shadowed}", file=sys.stderr)
    return 0
