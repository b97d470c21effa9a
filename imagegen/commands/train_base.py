"""`imagegen train-base`: its flags are the fields of TrainBaseOptions (imagegen.train.base.options)."""
from __future__ import annotations

import argparse
import json

from ..options import add_arguments, from_arguments
from ..train.base.options import TrainBaseOptions
from .registry import command


def add_train_base_arguments(p: argparse.ArgumentParser) -> None:
    add_arguments(p, TrainBaseOptions)


@command("train-base", "train the embedded shapes model from scratch: CLIP -> VAE -> prior -> decoder",
         add_train_base_arguments)
def run_train_base(args) -> int:
    from ..train.base.run import run

    result = run(from_arguments(TrainBaseOptions, args))
    print(json.dumps(result["metrics"], indent=2))
    return 0
