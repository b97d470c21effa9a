"""`imagegen lora list|inspect|convert`: the adapter files (no torch, but for convert)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..presets import DEFAULT_PRESET
from .registry import OneLineParser, command


def add_lora_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="lora_command", metavar="ACTION", parser_class=OneLineParser, required=True)
    listing = sub.add_parser("list", help="the adapters found (lora_adapters/, $IMAGEGEN_LORA_PATH)")
    listing.add_argument("--json", action="store_true")
    inspect = sub.add_parser("inspect", help="every metadata field of one adapter")
    inspect.add_argument("name", help="adapter name or .safetensors path")
    inspect.add_argument("--json", action="store_true")
    convert = sub.add_parser("convert", help="write an adapter in kohya format (lora_unet_/lora_te_ keys)")
    convert.add_argument("name", help="adapter name or .safetensors path")
    convert.add_argument("output", help="the new .safetensors file (must not exist)")
    convert.add_argument("--model", default=None, help=f"the base model whose module names map keys (default {DEFAULT_PRESET})")


@command("lora", "list, inspect and convert LoRA adapter files", add_lora_arguments)
def run_lora(args) -> int:
    from ..lora import files

    if args.lora_command == "list":
        rows = [files.describe(path).as_dict() for path in files.available().values()]
        for row in rows:
            del row["metadata"]
        if args.json:
            for row in rows:
                print(json.dumps(row))
            return 0
        print(f"{'NAME':<16} {'COMPONENTS':<22} {'RANK':<26} {'BASE':<10} {'TRIGGERS':<20} SIZE")
        for r in rows:
            ranks = ",".join(f"{k}={v}" for k, v in r["ranks"].items()) or "?"
            print(f"{r['name']:<16} {','.join(r['components']):<22} {ranks:<26} {r['base_model']:<10} "
                  f"{','.join(r['trigger_words']):<20} {r['size_bytes'] / 1024:.0f} KiB")
        return 0
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
