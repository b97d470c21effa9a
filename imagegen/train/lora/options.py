"""The options of a LoRA training run, declared once: the fields of `LoraOptions` are also the flags of
`imagegen train-lora` (imagegen.options). They are checked before any work: a bad value is one line."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from ...errors import UserError
from ...lora.requests import COMPONENTS  # the components an adapter file can hold
from ...options import comma_list, option
from ...presets import DEFAULT_PRESET

MIXED_PRECISION = ("no", "bf16")
LR_SCHEDULERS = ("constant", "cosine", "linear")  # diffusers.optimization names; cosine and linear decay to 0
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def accelerate_mixed_precision() -> str:
    """The default of --mixed-precision: accelerate's (`accelerate launch --mixed_precision bf16`, or its config), or
    no."""
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()


@dataclass
class LoraOptions:
    """Every option of a run. Those with a help text are also the flags of `imagegen train-lora` (imagegen.options)."""

    data: str = option(help="folder of images with same-name .txt captions (kohya), or with a metadata.jsonl of "
                            "file_name and text (Hugging Face imagefolder)", positional=True, metavar="DATA")
    name: str = option(help="adapter name: writes OUT/NAME.safetensors")
    base: str = option(DEFAULT_PRESET, "base model: preset name, preset .toml or model folder (default %(default)s)",
                       metavar="MODEL")
    components: tuple = option(("unet", "prior"), "what gets LoRA layers: some of unet,prior,text_encoder,vae (default "
                               "%(default)s); vae = the VAE decoder, trained to redraw the images from their latents "
                               "(for fine detail the base VAE loses)", parse=comma_list)
    rank: int = option(4, "LoRA rank (default %(default)s)")
    alpha: float | None = option(None, "LoRA alpha; the update is scaled by alpha / rank (default: the rank)")
    # > 0: also the U-Net's ResNet convolutions, at this rank and the same alpha / rank scale
    conv_rank: int = option(0, "also put LoRA on the U-Net's ResNet convolutions at rank N, as kohya's LoCon conv_dim "
                               "(default %(default)s: attention only)", metavar="N")
    vae_batch_size: int = option(8, "with the vae component: examples of each batch it decodes (default %(default)s; "
                                    "decoding costs more than a U-Net step)", metavar="N")  # at most --batch-size
    steps: int = option(500, "optimizer steps (default %(default)s)")
    lr: float = option(1e-4, "AdamW learning rate (default %(default)s)")
    lr_scheduler: str = option("constant", "learning-rate schedule; cosine and linear decay to 0 at the last step "
                                           "(default %(default)s)", metavar="{" + ",".join(LR_SCHEDULERS) + "}")
    lr_warmup_steps: int = option(0, "steps of linear warm-up from 0 to --lr (default %(default)s)", metavar="N")
    # > 0: the adapter holds an exponential moving average of the weights (diffusers' EMAModel)
    ema_decay: float = option(0.0, "write an exponential moving average of the LoRA weights with this decay, e.g. "
                                   "0.995 (default %(default)s: the last weights)", metavar="D")
    snr_gamma: float = option(5.0, "Min-SNR-gamma loss weighting of the U-Net (Hang et al. 2023, kohya's "
                                   "--min_snr_gamma); 0: plain MSE, which weighs the low-noise steps (fine detail) "
                                   "more (default %(default)s)", flag="--min-snr-gamma", metavar="G")
    # The U-Net learns on timesteps [min_timestep, max_timestep) only (kohya's --min_timestep / --max_timestep); None:
    # up to the scheduler's num_train_timesteps. A style learnt on low timesteps leaves the base model's layout alone.
    min_timestep: int = option(0, "the U-Net learns on timesteps from T (default %(default)s)", metavar="T")
    max_timestep: int | None = option(None, "... up to T, exclusive (default: all the scheduler's, e.g. 1000); a "
                                            "style trained on the low-noise end leaves the base model's composition "
                                            "alone", metavar="T")
    batch_size: int = option(4, "examples per step and process (default %(default)s)")
    grad_accum: int = option(1, "micro-batches per optimizer step (default %(default)s)")
    seed: int = option(0, "seed of the LoRA init, example order, noise (default %(default)s)")
    mixed_precision: str = option(help="bf16 autocast (~20x slower on CPUs without AVX-512 BF16; default no, or "
                                       "accelerate's)", factory=accelerate_mixed_precision, parse=str.lower,
                                  metavar="{" + ",".join(MIXED_PRECISION) + "}")
    # square side; None: the model's decoder width x height
    resolution: int | None = option(None, "train at this square size (default: the model's width x height)")
    save_every: int = option(100, "checkpoint every N steps (default %(default)s)")
    resume: str | None = option(None, "continue from the newest checkpoint or a checkpoint folder",
                                metavar="latest|PATH")
    validation_prompts: tuple = option((), "prompt of the validation grid (repeatable): base model and adapter side "
                                           "by side", flag="--validation-prompt", repeat=True, metavar="TEXT")
    validation_every: int = option(0, "write a validation grid every N steps (default %(default)s: after the last "
                                      "step only)", metavar="N")
    triggers: tuple = option((), "trigger word stored in the adapter (repeatable)", flag="--trigger", repeat=True,
                             metavar="WORD")
    out: str = option("lora_adapters", "where the adapter goes (default %(default)s/)", metavar="FOLDER")
    overwrite: bool = option(False, "replace an adapter of that name (the old file stays until the new one is "
                                    "complete)")
    skip_bad: bool = option(False, "train without unreadable images instead of stopping")
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0

    def check(self) -> None:
        from ...settings import check_seed

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
