"""The optimisation loop every stage shares: AdamW (Loshchilov & Hutter 2019) with linear warm-up and cosine decay,
gradient-norm clipping, optional EMA of the weights, optional bfloat16 autocast, a step and a time budget, and
resumable checkpoints; and `save_model`, which writes a finished model in its storage dtype.

A stage hands in its model and a `loss_fn(step) -> (loss, logs)` that builds batch `step` itself; the loop owns
everything else. A checkpoint (`<stage dir>/checkpoint.safetensors`, state_file.py) holds the model, EMA, optimizer and
LR-schedule state, step, elapsed seconds and torch RNG state without a pickle, so it can be committed to carry a run
into the next working session; it is written every `run.checkpoint_minutes` and when the loop ends. A run started
before that format resumes from its `checkpoint.pt` (read with `torch.load(weights_only=True)`).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Callable

import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .config import RunConfig, TrainSettings
from .state_file import load_state, save_state

log = logging.getLogger("imagegen.train")

LossFn = Callable[[int], tuple[torch.Tensor, dict[str, float]]]
CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pt"  # torch.save's format, written before CHECKPOINT


def autocast(enabled: bool):
    """bfloat16 autocast on the CPU for the trained model's forward (weights and the optimizer stay float32)."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and kernels only: decaying biases, norm gains or CLIP's logit scale only hurts."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decayed = [p for _, p in trainable if p.ndim >= 2]
    kept = [p for _, p in trainable if p.ndim < 2]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0}]


def train(stage: str, stage_dir: Path, model: torch.nn.Module, loss_fn: LossFn, settings: TrainSettings,
          run: RunConfig, ema: EMAModel | None = None) -> dict:
    """Train `model` until `settings.max_steps` or `settings.minutes`; returns what happened as plain numbers."""
    optimizer = torch.optim.AdamW(param_groups(model, settings.weight_decay), lr=settings.lr,
                                  betas=tuple(settings.adam_betas))
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, settings.warmup_steps, settings.max_steps)
    trained = [p for p in model.parameters() if p.requires_grad]
    stage_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = stage_dir / CHECKPOINT
    step, elapsed = 0, 0.0
    found = next((path for path in (checkpoint_path, stage_dir / LEGACY_CHECKPOINT) if path.exists()), None)
    if found is not None:
        step, elapsed = load_checkpoint(found, model, optimizer, lr_schedule, ema)
        log.info("%s: resumed at step %d after %.1f min (%s)", stage, step, elapsed / 60, found.name)

    budget = settings.minutes * 60
    last_checkpoint = time.perf_counter()
    seconds_per_step, loss_average = None, None  # exponential averages for the progress bar
    window_started, window_steps = time.perf_counter(), 0
    bar = tqdm(total=settings.max_steps, initial=step, desc=stage, dynamic_ncols=True)
    model.train()
    while step < settings.max_steps and elapsed < budget:
        started = time.perf_counter()
        loss, logs = loss_fn(step)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trained, settings.grad_clip)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(trained)
        step += 1
        took = time.perf_counter() - started
        elapsed += took
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{stage}: loss is {loss.item()} at step {step}; lower the learning rate")

        # Averages that forget the first, slow steps (allocation, warm-up) within about 20 steps.
        seconds_per_step = took if seconds_per_step is None else 0.9 * seconds_per_step + 0.1 * took
        loss_average = loss.item() if loss_average is None else 0.9 * loss_average + 0.1 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_average:.4f}", s_per_step=f"{seconds_per_step:.2f}")
        window_steps += 1
        if step % run.log_every_steps == 0 or step == settings.max_steps:
            window = (time.perf_counter() - window_started) / window_steps
            details = " ".join(f"{k}={v:.4f}" for k, v in logs.items())
            log.info("%s step %d/%d loss=%.4f %s grad_norm=%.3f lr=%.2e %.3f s/step elapsed=%.1f min", stage, step,
                     settings.max_steps, loss.item(), details, grad_norm.item(), lr_schedule.get_last_lr()[0],
                     window, elapsed / 60)
            window_started, window_steps = time.perf_counter(), 0
        if time.perf_counter() - last_checkpoint > run.checkpoint_minutes * 60:
            save_checkpoint(checkpoint_path, model, optimizer, lr_schedule, ema, step, elapsed)
            last_checkpoint = time.perf_counter()
    bar.close()
    save_checkpoint(checkpoint_path, model, optimizer, lr_schedule, ema, step, elapsed)
    if step < settings.max_steps:
        log.warning("%s: the %.1f-minute budget ended the stage at step %d of %d; the cosine LR decay did not "
                    "finish (lower max_steps to what the budget allows)", stage, settings.minutes, step,
                    settings.max_steps)
    model.eval()
    return {"steps": step, "train_minutes": round(elapsed / 60, 2),
            "seconds_per_step": round(elapsed / max(step, 1), 4),
            "final_loss_average": None if loss_average is None else round(loss_average, 5),
            "stopped_by": "steps" if step >= settings.max_steps else "time"}


def save_checkpoint(path: Path, model, optimizer, lr_schedule, ema, step: int, elapsed: float) -> None:
    """Atomically (save_state): a kill during the write leaves the previous checkpoint intact."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_schedule": lr_schedule.state_dict(),
        "ema": ema.state_dict() if ema is not None else {},
        "step": step,
        "elapsed_seconds": elapsed,
        "torch_rng": torch.get_rng_state(),
    }
    save_state(path, state)
    (path.parent / LEGACY_CHECKPOINT).unlink(missing_ok=True)  # resumed from it; the new file supersedes it


def save_model(model, folder: Path, dtype_name: str) -> None:
    """`save_pretrained` (safetensors) in a storage dtype; the model keeps its own dtype afterwards."""
    dtype, original = getattr(torch, dtype_name), model.dtype
    if dtype != original:
        model.to(dtype)
    model.save_pretrained(folder, safe_serialization=True)
    if dtype != original:
        model.to(original)


def load_checkpoint(path: Path, model, optimizer, lr_schedule, ema) -> tuple[int, float]:
    state = load_state(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    lr_schedule.load_state_dict(state["lr_schedule"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"], state["elapsed_seconds"]
