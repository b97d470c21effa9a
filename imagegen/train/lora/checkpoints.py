"""Checkpoints of a LoRA training run, and the stop request that Ctrl-C makes.

A checkpoint is a folder `<out>/.<name>.training/checkpoints/step-000100/` holding `state.pt` (the LoRA weights of
every trained component, the optimizer state, the step and what the run was) and `rng-<process>.pt` (the torch, numpy
and Python RNG states of each process). It is written as `step-000100.partial/` and renamed when every process has
written its part, so a kill at any moment leaves the previous checkpoint whole; the newest `KEEP` are kept. Only
tensors and plain containers are stored, so `torch.load(weights_only=True)` reads them.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ...errors import UserError

KEEP = 2
PREFIX = "step-"
PARTIAL = ".partial"
FORCE_AFTER_SECONDS = 2.0  # a second Ctrl-C this long after the first stops at once (a launcher's echo does not)


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete(run_dir: Path) -> list[Path]:
    """The finished checkpoints, oldest first."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(PREFIX) and not p.name.endswith(PARTIAL)
             and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def find(run_dir: Path, resume: str, name: str) -> Path:
    """`latest` -> the newest checkpoint of the run; otherwise a checkpoint folder (or a run's checkpoints folder)."""
    if resume == "latest":
        found = complete(run_dir)
        if not found:
            raise UserError(f"nothing to resume: no checkpoint of {name!r} in {str(checkpoints_dir(run_dir))!r}")
        return found[-1]
    path = Path(resume)
    if (path / "state.pt").is_file():
        return path
    found = complete(path.parent) if path.name == "checkpoints" else []
    if found:
        return found[-1]
    raise UserError(f"--resume {resume!r} is not a checkpoint folder (one holding state.pt); use --resume latest")


def rng_state() -> dict:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
            "numpy": [kind, position, has_gauss, gauss], "python": [version, list(python_state), python_gauss]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, state["numpy_keys"].numpy().astype(np.uint32), position, has_gauss, gauss))
    version, python_state, python_gauss = state["python"]
    random.setstate((version, tuple(python_state), python_gauss))


def save(accelerator, run_dir: Path, step: int, state: dict) -> Path:
    """Write checkpoint `step` (every process calls this): each process its RNG states, the main process `state`."""
    final = checkpoints_dir(run_dir) / f"{PREFIX}{step:06d}"
    partial = final.with_name(final.name + PARTIAL)
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), partial / f"rng-{accelerator.process_index}.pt")
    if main:
        torch.save(state, partial / "state.pt")
    accelerator.wait_for_everyone()
    if main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in complete(run_dir)[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path, process_index: int) -> tuple[dict, dict | None]:
    """(state, this process's RNG states or None)."""
    try:
        state = torch.load(path / "state.pt", weights_only=True)
    except Exception as err:  # a file cut short or not a checkpoint at all
        raise UserError(f"cannot read checkpoint {str(path)!r}: {str(err).splitlines()[0]}") from None
    rng_file = path / f"rng-{process_index}.pt"
    return state, torch.load(rng_file, weights_only=True) if rng_file.is_file() else None


def check_same_run(path: Path, stored: dict, current: dict) -> None:
    """A checkpoint continues only the run it came from."""
    changed = [f"{k} {stored.get(k)!r} -> {current[k]!r}" for k in current if stored.get(k) != current[k]]
    if changed:
        raise UserError(f"checkpoint {str(path)!r} is from a different run ({'; '.join(changed[:4])}); resume "
                        "with the same data and options, or start again (no --resume, and --overwrite)")


def clear(run_dir: Path) -> None:
    shutil.rmtree(checkpoints_dir(run_dir), ignore_errors=True)


class StopRequest:
    """While active, SIGINT (Ctrl-C) and SIGTERM only set `requested`: the loop finishes its step, saves a checkpoint
    and returns. A second Ctrl-C, FORCE_AFTER_SECONDS later, interrupts at once."""

    def __init__(self, announce: bool = True):
        self.requested = False
        self.announce = announce
        self._first = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.requested and signum == signal.SIGINT and now - self._first > FORCE_AFTER_SECONDS:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested, self._first = True, now
            if self.announce:
                print("\nimagegen: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)",
                      file=sys.stderr, flush=True)
