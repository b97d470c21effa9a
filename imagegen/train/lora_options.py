"""The options of a LoRA training run (`imagegen train-lora`), checked before any work: a bad value is one line."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import UserError
from ..lora.requests import COMPONENTS  # the components an adapter file can hold
from ..presets import DEFAULT_PRESET

MIXED_PRECISION = ("no", "bf16")
LR_SCHEDULERS = ("constant", "cosine", "linear")  # diffusers.optimization names; cosine and linear decay to 0
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass
class LoraOptions:
    data: str
    name: str
    base: str = DEFAULT_PRESET  # preset name, preset file or model folder
    components: tuple = ("unet", "prior")
    rank: int = 4
    alpha: float | None = None  # None: the rank (scale 1)
    conv_rank: int = 0  # > 0: also the U-Net's ResNet convolutions, at this rank and the same alpha / rank scale
    steps: int = 500  # optimizer steps
    lr: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    ema_decay: float = 0.0  # > 0: the adapter holds an exponential moving average of the weights (diffusers' EMAModel)
    batch_size: int = 4  # per process
    grad_accum: int = 1
    seed: int = 0
    mixed_precision: str = "no"  # or "bf16": ~20x slower on CPUs without AVX-512 BF16
    save_every: int = 100
    resume: str | None = None  # "latest" or a checkpoint folder
    validation_prompts: tuple = ()
    validation_every: int = 0  # 0: only after the last step
    out: str = "lora_adapters"
    overwrite: bool = False
    skip_bad: bool = False
    triggers: tuple = ()
    resolution: int | None = None  # square side; None: the model's decoder width x height
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    snr_gamma: float = 5.0  # 0: plain MSE
    # The U-Net learns on timesteps [min_timestep, max_timestep) only (kohya's --min_timestep / --max_timestep); None:
    # up to the scheduler's num_train_timesteps. A style learnt on low timesteps leaves the base model's layout alone.
    min_timestep: int = 0
    max_timestep: int | None = None
    vae_batch_size: int = 8  # examples per micro-batch that the vae component decodes (at most --batch-size)

    def check(self) -> None:
        from ..settings import check_seed

        if not NAME_PATTERN.fullmatch(self.name) or ".." in self.name or self.name.endswith(".safetensors"):
            raise UserError(f"adapter name {self.name!r} must be a plain name: letters, digits, '_', '-', '.'")
        unknown = [c for c in self.components if c not in COMPONENTS]
        if unknown or not self.components or len(set(self.components)) != len(self.components):
            raise UserError(f"components must be some of {', '.join(COMPONENTS)} (each once), got "
                            f"{','.join(self.components) or 'none'}")
        for name in ("rank", "steps", "batch_size", "grad_accum", "save_every", "vae_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {value!r}")
        for name in ("lr", "alpha"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UserError(f"--{name} must be a finite number > 0, got {value!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise UserError(f"--lr-scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}")
        warmup = self.lr_warmup_steps
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
            raise UserError(f"--lr-warmup-steps must be a whole number >= 0, got {self.lr_warmup_steps!r}")
        if not (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1):
            raise UserError(f"--ema-decay must be a number in [0, 1) (0: off; e.g. 0.995), got {self.ema_decay!r}")
        if not isinstance(self.conv_rank, int) or isinstance(self.conv_rank, bool) or self.conv_rank < 0:
            raise UserError(f"--conv-rank must be a whole number >= 0, got {self.conv_rank!r}")
        if not (isinstance(self.snr_gamma, (int, float)) and math.isfinite(self.snr_gamma) and self.snr_gamma >= 0):
            raise UserError(f"--min-snr-gamma must be a finite number >= 0 (0: plain MSE), got {self.snr_gamma!r}")
        top = self.max_timestep
        if (not isinstance(self.min_timestep, int) or self.min_timestep < 0
                or top is not None and (not isinstance(top, int) or top <= self.min_timestep)):
            raise UserError(f"--min-timestep {self.min_timestep!r} and --max-timestep {top!r} must be whole numbers "
                            "with 0 <= min < max")
        if self.conv_rank and "unet" not in self.components:
            raise UserError(f"--conv-rank {self.conv_rank} needs the unet component (only the U-Net has "
                            f"convolutions), got components {','.join(self.components)}")
        check_seed("--seed", self.seed)
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got "
                            f"{self.mixed_precision!r}")
        if not isinstance(self.validation_every, int) or self.validation_every < 0:
            raise UserError(f"--validation-every must be a whole number >= 0, got {self.validation_every!r}")
        if self.resolution is not None and (not isinstance(self.resolution, int) or self.resolution < 8):
            raise UserError(f"--resolution must be a whole number >= 8, got {self.resolution!r}")
        if any(not p.strip() for p in self.validation_prompts):
            raise UserError("--validation-prompt is empty")
