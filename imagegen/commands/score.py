"""`imagegen score`: CLIPScore of images against a prompt, 100 x max(cosine, 0)."""
from __future__ import annotations

import argparse
import json

from ..errors import UserError
from .clip_options import add_clip_arguments, check_batch_size
from .registry import command


def add_score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files and folders (walked recursively)")
    p.add_argument("--prompt", required=True, help="the text the images are scored against")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    add_clip_arguments(p)


@command("score", "CLIP score of images against a prompt: 100 x max(cosine, 0)", add_score_arguments)
def run_score(args) -> int:
    check_batch_size(args)
    if not args.prompt.strip():
        raise UserError("--prompt is empty; give the text to score the images against")

    from ..classify.run import collect_images, score_files

    files = collect_images(args.images, args.skip_bad)

    from ..classify.backends import load_backend

    backend = load_backend(args.clip, args.checkpoint, args.device)
    for path, score in score_files(backend, files, args.prompt, args.batch_size, args.skip_bad):
        print(json.dumps({"path": path, "clip_score": score, "prompt": args.prompt, "clip": backend.name})
              if args.json else f"{score:7.2f}  {path}")
    return 0
