"""Generation options, grouped in small frozen dataclasses (no torch here: the CLI validates with them).

`PriorSettings` drive stage 1 (text embedding -> image embedding), `DecoderSettings` stage 2 (image embedding ->
latents -> pixels). A model preset supplies the defaults; a call overrides single fields with `dataclasses.replace`.
A field's `infotext` metadata is its name in AUTOMATIC1111's parameters text (imagegen.record).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

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


MAX_STEPS = 1000  # the schedulers' training timesteps: more steps would only repeat them
MIN_STEPS = {"unclip": 2}  # UnCLIPScheduler spaces its timesteps by steps - 1
MAX_SIDE_FACTOR = 4  # a side may be up to 4x the model's trained side (the U-Net's receptive field stays sane)
MAX_CALL_IMAGES_AT_TRAINED_SIZE = 64  # pixels per call: at most 64 images of the model's trained size


def _check_steps(name: str, steps: int, scheduler: str) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UserError(f"{name} must be a whole number >= 1, got {steps!r}")
    low = MIN_STEPS.get(scheduler, 1)
    if not low <= steps <= MAX_STEPS:
        raise UserError(f"{name} must be from {low} to {MAX_STEPS} for the {scheduler} scheduler, got {steps} "
                        f"({'it spaces its timesteps by steps - 1' if steps < low else 'the training timesteps'})")


def _check_guidance(name: str, guidance: float) -> None:
    if not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or guidance < 0:
        raise UserError(f"{name} must be a finite number >= 0, got {guidance!r}")


def _check_guidance_shape(prefix: str, settings) -> None:
    """The guidance interval and rescale of imagegen.guidance, shared by both stages' settings."""
    start, stop, rescale = settings.guidance_start, settings.guidance_stop, settings.guidance_rescale
    for name, value in (("start", start), ("stop", stop), ("rescale", rescale)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise UserError(f"{prefix}guidance {name} must be a number from 0 to 1, got {value!r}")
    if start >= stop:
        raise UserError(f"{prefix}guidance start must be below its stop (fractions of the steps), got {start}, {stop}")


def check_seed(name: str, seed: int | None) -> None:
    if seed is None:
        return
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"{name} must be a whole number from 0 to {MAX_SEED}, got {seed!r}")


@dataclass(frozen=True)
class PriorSettings:
    """Stage 1: sampling a CLIP image embedding from the text embedding (DALL-E 2's diffusion prior)."""

    steps: int = field(default=25, metadata={"infotext": "Prior steps"})
    guidance: float = field(default=4.0, metadata={"infotext": "Prior CFG scale"})
    scheduler: str = field(default="unclip", metadata={"infotext": "Prior sampler"})
    # Guidance on the steps from start to stop (fractions of the loop) only, and rescaled: imagegen.guidance.
    guidance_start: float = field(default=0.0, metadata={"infotext": "Prior CFG start"})
    guidance_stop: float = field(default=1.0, metadata={"infotext": "Prior CFG stop"})
    guidance_rescale: float = field(default=0.0, metadata={"infotext": "Prior CFG rescale"})
    noise: float = field(default=1.0, metadata={"infotext": "Prior noise"})  # x the starting noise: a temperature

    def validate(self) -> None:
        if self.scheduler not in PRIOR_SCHEDULERS:
            raise UserError(f"unknown prior scheduler {self.scheduler!r}; choose one of: {', '.join(PRIOR_SCHEDULERS)}")
        _check_steps("prior steps", self.steps, self.scheduler)
        _check_guidance("prior guidance", self.guidance)
        _check_guidance_shape("prior ", self)
        if not isinstance(self.noise, (int, float)) or not math.isfinite(self.noise) or self.noise <= 0:
            raise UserError(f"prior noise must be a finite number > 0, got {self.noise!r}")


@dataclass(frozen=True)
class DecoderSettings:
    """Stage 2: denoising VAE latents conditioned on the image embedding, then decoding them to pixels."""

    steps: int = field(default=50, metadata={"infotext": "Steps"})
    guidance: float = field(default=4.0, metadata={"infotext": "CFG scale"})
    scheduler: str = field(default="ddpm", metadata={"infotext": "Sampler"})
    width: int = 512  # width and height are written together as the infotext's "Size: WxH"
    height: int = 512
    guidance_start: float = field(default=0.0, metadata={"infotext": "CFG start"})  # as the prior's
    guidance_stop: float = field(default=1.0, metadata={"infotext": "CFG stop"})
    guidance_rescale: float = field(default=0.0, metadata={"infotext": "CFG rescale"})

    def validate(self, vae_scale_factor: int | None = None) -> None:
        if self.scheduler not in DECODER_SCHEDULERS:
            raise UserError(f"unknown scheduler {self.scheduler!r}; choose one of: {', '.join(DECODER_SCHEDULERS)}")
        _check_steps("steps", self.steps, self.scheduler)
        _check_guidance("guidance", self.guidance)
        _check_guidance_shape("", self)
        factor = vae_scale_factor or 1
        for name, value in (("width", self.width), ("height", self.height)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % factor:
                raise UserError(f"{name} must be a positive multiple of {factor} (the VAE's downscale factor), got {value!r}")


@dataclass(frozen=True)
class Limits:
    """How big one pipeline call may be, from the model's trained size: checked before any work, so that a request
    the machine cannot hold is a one-line error and not the out-of-memory killer."""

    max_width: int
    max_height: int
    max_call_pixels: int  # images x width x height of one call
    trained: tuple = (0, 0)

    @classmethod
    def for_model(cls, trained: DecoderSettings) -> "Limits":
        return cls(max_width=trained.width * MAX_SIDE_FACTOR, max_height=trained.height * MAX_SIDE_FACTOR,
                   max_call_pixels=MAX_CALL_IMAGES_AT_TRAINED_SIZE * trained.width * trained.height,
                   trained=(trained.width, trained.height))

    def check(self, decoder: DecoderSettings, images: int) -> None:
        trained = f"{self.trained[0]}x{self.trained[1]}"
        if decoder.width > self.max_width or decoder.height > self.max_height:
            raise UserError(f"size {decoder.width}x{decoder.height} is over this model's limit of {self.max_width}x"
                            f"{self.max_height} ({MAX_SIDE_FACTOR}x its trained {trained} per side)")
        pixels = images * decoder.width * decoder.height
        if pixels > self.max_call_pixels:
            most = max(1, self.max_call_pixels // (decoder.width * decoder.height))
            raise UserError(f"{images} images of {decoder.width}x{decoder.height} in one call are over this model's "
                            f"limit of {most} at that size ({MAX_CALL_IMAGES_AT_TRAINED_SIZE} at its trained "
                            f"{trained}); split the work into several calls")


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

