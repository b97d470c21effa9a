"""The options `imagegen classify` and `imagegen score` share: which CLIP, on which device, in what batches."""
from __future__ import annotations

import argparse

from ..errors import UserError
from ..presets import DEFAULT_PRESET


def add_clip_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip", default=DEFAULT_PRESET, metavar="BACKEND",
                   help=f"the CLIP to use: a model preset or folder (its own CLIP pair; default {DEFAULT_PRESET}), "
                        "open_clip:ARCH/PRETRAINED, open_clip:hf-hub:ORG/REPO, or open_clip:ARCH with --checkpoint")
    p.add_argument("--checkpoint", metavar="FILE.safetensors", help="weights for --clip open_clip:ARCH")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable and non-image files with a warning")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")


def check_batch_size(args) -> None:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a whole number >= 1, got {args.batch_size}")
