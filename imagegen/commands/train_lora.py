"""`imagegen train-lora`: its flags are the fields of LoraOptions (imagegen.train.lora.options), declared there once.

`accelerate launch --num_processes N --cpu -m imagegen train-lora DATA --name NAME` trains data-parallel: accelerate
starts one process (huggingface/accelerate#2741), which starts the N workers as `python -m imagegen train-lora ...`
(imagegen.launch); the main process speaks for all.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import UserError
from ..options import add_arguments, from_arguments
from ..train.lora.options import LoraOptions
from .registry import command


def add_train_lora_arguments(p: argparse.ArgumentParser) -> None:
    add_arguments(p, LoraOptions)


@command("train-lora", "train a LoRA adapter on a folder of captioned images (accelerate launch for several processes)",
         add_train_lora_arguments)
def run_train_lora(args) -> int:
    from ..launch import lost_processes, relaunch

    options = from_arguments(LoraOptions, args)
    processes = lost_processes()
    if processes > 1:  # the one process `accelerate launch --cpu` started: it starts the workers
        return relaunch(processes, args.argv)
    rank = int(os.environ.get("RANK", "0"))
    if rank:  # one data-parallel run: the main process speaks for all
        logging.getLogger("imagegen").setLevel(logging.ERROR)
    try:
        from ..train.lora.train import train_lora

        result = train_lora(options)
    except UserError:
        if rank:
            return 2  # the main process reports it
        raise
    if rank:
        return 130 if result.interrupted else 0
    for path in result.validation_images:
        print(f"validation grid: {path}", file=sys.stderr)
    if result.interrupted:
        print(f"imagegen: stopped at step {result.steps}; checkpoint {result.checkpoint}; continue with the same "
              "command and --resume latest", file=sys.stderr)
        return 130
    speed = f", {result.seconds_per_step:.3f} s/step" if result.seconds_per_step else ""
    loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    print(f"{result.adapter}  ({result.steps} steps{speed}{loss})")
    return 0
