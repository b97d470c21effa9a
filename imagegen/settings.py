"""Generation options, grouped in small frozen dataclasses (no torch here: the CLI validates with them).

`PriorSettings` drive stage 1 (text embedding -> image embedding), `DecoderSettings` stage 2 (image embedding ->
latents -> pixels). A model preset supplies the defaults; a call overrides single fields with `dataclasses.replace`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import UserError

MAX_SEED = 2**32 - 1

# Names a user types -> diffusers scheduler classes. The decoder accepts any of them, the prior the ones that
# handle its "predict the clean sample" objective.
DECODER_SCHEDULERS = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
}
PRIOR_SCHEDULERS = {
    "unclip": "UnCLIPScheduler",
    "ddpm": "DDPMScheduler",
}
DEVICES = ("cpu", "cuda", "cuda:N", "mps")
DTYPES = ("auto", "float32", "float16", "bfloat16")
ATTENTION_BACKENDS = ("auto", "sdpa", "xformers")


def _check_steps(name: str, steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UserError(f"{name} must be a whole number >= 1, got {steps!r}")


def _check_guidance(name: str, guidance: float) -> None:
    if not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or guidance < 0:
        raise UserError(f"{name} must be a finite number >= 0, got {guidance!r}")


def check_seed(name: str, seed: int | None) -> None:
    if seed is None:
        return
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"{name} must be a whole number from 0 to {MAX_SEED}, got {seed!r}")


@dataclass(frozen=True)
class PriorSettings:
    """Stage 1: sampling a CLIP image embedding from the text embedding (DALL-E 2's diffusion prior)."""

    steps: int = 25
    guidance: float = 4.0
    scheduler: str = "unclip"

    def validate(self) -> None:
        _check_steps("prior steps", self.steps)
        _check_guidance("prior guidance", self.guidance)
        if self.scheduler not in PRIOR_SCHEDULERS:
            raise UserError(f"unknown prior scheduler {self.scheduler!r}; choose one of: {', '.join(PRIOR_SCHEDULERS)}")


@dataclass(frozen=True)
class DecoderSettings:
    """Stage 2: denoising VAE latents conditioned on the image embedding, then decoding them to pixels."""

    steps: int = 50
    guidance: float = 4.0
    scheduler: str = "ddpm"
    width: int = 512
    height: int = 512

    def validate(self, vae_scale_factor: int | None = None) -> None:
        _check_steps("steps", self.steps)
        _check_guidance("guidance", self.guidance)
        if self.scheduler not in DECODER_SCHEDULERS:
            raise UserError(f"unknown scheduler {self.scheduler!r}; choose one of: {', '.join(DECODER_SCHEDULERS)}")
        factor = vae_scale_factor or 1
        for name, value in (("width", self.width), ("height", self.height)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % factor:
                raise UserError(f"{name} must be a positive multiple of {factor} (the VAE's downscale factor), got {value!r}")


@dataclass(frozen=True)
class RuntimeSettings:
    """Where and how the models run."""

    device: str = "cpu"
    dtype: str = "auto"
    attention: str = "auto"

    def validate(self) -> None:
        device = self.device
        ok = device in ("cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())
        if not ok:
            raise UserError(f"unknown device {device!r}; use one of: {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}; use one of: {', '.join(DTYPES)}")
        if self.dtype == "float16" and device == "cpu":
            raise UserError("dtype 'float16' needs a GPU; on the CPU use float32 or bfloat16")
        if self.attention not in ATTENTION_BACKENDS:
            raise UserError(f"unknown attention {self.attention!r}; use one of: {', '.join(ATTENTION_BACKENDS)}")

    @property
    def resolved_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "float16" if self.device.startswith("cuda") else "float32"


def settings_dict(prior: PriorSettings, decoder: DecoderSettings) -> dict:
    return {"prior": asdict(prior), "decoder": asdict(decoder)}
