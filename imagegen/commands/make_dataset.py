"""`imagegen make-dataset`: a captioned demonstration dataset from the shapes world, for train-lora and classify."""
from __future__ import annotations

import argparse

from ..errors import UserError
from .registry import command

DATASETS = ("heart", "outline", "shapes", "by-shape", "by-colour", "by-background", "by-size", "by-position")


def add_make_dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=DATASETS, help="heart: filled hearts ('a red heart ...'); outline: the five base "
                                                  "shapes drawn as 3-px outlines ('a red outlined circle ...'); "
                                                  "shapes: the base world, e.g. as regularization images; "
                                                  "by-ATTRIBUTE: renders in one subfolder per class, for classify --eval")
    p.add_argument("out", metavar="OUT", help="the folder to write (new or empty): PNG + .txt pairs and metadata.jsonl")
    p.add_argument("--count", type=int, default=256, help="images (default 256)")
    p.add_argument("--seed", type=int, default=0)


@command("make-dataset", "write a captioned demonstration dataset from the shapes world, for train-lora", add_make_dataset_arguments)
def run_make_dataset(args) -> int:
    from ..data import shapes
    from ..settings import check_seed

    if args.count < 1:
        raise UserError(f"--count must be a whole number >= 1, got {args.count}")
    check_seed("--seed", args.seed)
    try:
        if args.kind.startswith("by-"):
            from ..evaluation.labelled import write_labelled_folders

            folder = write_labelled_folders(args.out, args.count, args.seed, args.kind.removeprefix("by-"))
        else:
            kind = {"heart": dict(shapes=("heart",)), "outline": dict(shapes=shapes.SHAPES, style="outline"),
                    "shapes": dict(shapes=shapes.SHAPES)}[args.kind]
            folder = shapes.write_dataset(args.out, args.count, args.seed, **kind)
    except (ValueError, OSError) as err:
        raise UserError(str(err)) from None
    print(folder)
    return 0
