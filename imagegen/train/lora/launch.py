"""The Accelerator of a LoRA training run; `accelerate launch --num_processes N --cpu -m imagegen train-lora` starts
its N gloo workers through imagegen.launch."""
from __future__ import annotations

import os


def make_accelerator(mixed_precision: str, grad_accum: int):
    """The run's Accelerator: gloo CPU processes when there is no GPU."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    if "WORLD_SIZE" not in os.environ:  # one process: forget a previous run's settings (tests, notebooks)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                       cpu=not torch.cuda.is_available())
