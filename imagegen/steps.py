"""The contract every sampling loop shares: after each step it reports a `StepInfo` (the idea of diffusers'
`callback_on_step_end`) to one hook, which drives the progress bar, the LoRA step windows and the caller's callback,
and then checks the interrupt flag.
"""
from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from .errors import Interrupted


@dataclass(frozen=True)
class StepInfo:
    """What a sampling loop reports after each step."""

    stage: str  # "prior" or "decoder"
    index: int  # 0-based step index
    total: int
    timestep: object  # the scheduler's timestep (a 0-d tensor)
    latents: object  # after the step: (N, D) prior embeddings or (B, C, h, w) decoder latents


@dataclass(frozen=True)
class RunControl:
    progress: bool = False  # tqdm bars
    callback: object = None  # callable(StepInfo)
    interrupt: object = None  # anything with is_set(), e.g. threading.Event


def step_reporter(stage: str, total: int, control: RunControl, *hooks):
    """The one per-step hook of a sampling loop: progress bar, `hooks` (e.g. LoRA step windows), the caller's
    callback, then the interrupt check."""
    bar = tqdm(total=total, desc=stage, disable=not control.progress, leave=False)
    everything = [lambda info: bar.update(1), *hooks] + ([control.callback] if control.callback else [])

    def report(info: StepInfo) -> None:
        try:
            for hook in everything:
                hook(info)
            if control.interrupt is not None and control.interrupt.is_set():
                raise Interrupted(f"interrupted after {stage} step {info.index + 1} of {total}")
        except BaseException:
            bar.close()
            raise
        if info.index + 1 == total:
            bar.close()
    return report
