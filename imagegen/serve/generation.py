"""What every route that makes images shares: checking a request field by field against the model and the server's
limits (a `FieldError` names the field and what it accepts), the adapters a remote client may name, the sampler
names AUTOMATIC1111 clients send, and turning a checked request into the batcher's rows.
"""
from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, replace

from ..errors import UserError
from ..record import SAMPLER_NAMES
from ..settings import DECODER_SCHEDULERS, MAX_SEED, MIN_STEPS
from .batcher import BatchKey, Row

MAX_PROMPT_CHARS = 4000
MAX_GUIDANCE = 30.0  # AUTOMATIC1111's cfg_scale slider ends at 30
RANDOM_SEED = -1
# AUTOMATIC1111 sampler names (and the old "<sampler> <schedule>" ones) -> ours: each to its nearest relative.
A1111_SAMPLERS = {
    "dpm++ 2m": "dpm++", "dpm++ 2m karras": "dpm++", "dpm++ 2m sde": "dpm++", "dpm++ 2m sde karras": "dpm++",
    "dpm++ 2m sde exponential": "dpm++", "dpm++ 2m sde heun": "dpm++", "dpm++ 3m sde": "dpm++",
    "dpm++ sde": "dpm++", "dpm++ sde karras": "dpm++", "dpm++ 2s a": "euler_a", "dpm++ 2s a karras": "euler_a",
    "dpm2": "dpm++", "dpm2 karras": "dpm++", "dpm2 a": "euler_a", "dpm2 a karras": "euler_a",
    "dpm fast": "dpm++", "dpm adaptive": "dpm++", "lms": "euler", "lms karras": "euler", "heun": "euler",
    "euler": "euler", "euler a": "euler_a", "ddim": "ddim", "ddim cfg++": "ddim", "plms": "ddim",
    "unipc": "unipc", "ddpm": "ddpm", "lcm": "euler_a", "restart": "euler",
}
# AUTOMATIC1111's schedule types: accepted; the model's own noise schedule is used whatever is asked.
A1111_SCHEDULES = ("automatic", "uniform", "karras", "exponential", "polyexponential", "sgm uniform", "sgm_uniform",
                   "kl optimal", "kl_optimal", "align your steps", "align_your_steps", "simple", "normal", "ddim",
                   "beta")
_DRIVE = re.compile(r"^[A-Za-z]:")


class FieldError(UserError):
    """Bad input in one field of a request: the message names it and what would be accepted."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Limits:
    """The server's per-request limits, on top of the model's own (imagegen.settings.Limits)."""

    max_images: int
    max_steps: int
    max_pixels: int | None


def whole(field: str, value, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise FieldError(field, f"{field} must be a whole number from {low} to {high}, got {value!r}")
    return value


def number(field: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise FieldError(field, f"{field} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def seed(field: str, value) -> int | None:
    """-1 (or None): random; otherwise 0 .. 2**32 - 1."""
    if value is None or value == RANDOM_SEED and not isinstance(value, bool):
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise FieldError(field, f"{field} must be -1 (random) or a whole number from 0 to {MAX_SEED}, got {value!r}")
    return value


def text(field: str, value, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise FieldError(field, f"{field} must be a text, got {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise FieldError(field, f"{field} is {len(value)} characters long; at most {MAX_PROMPT_CHARS} are accepted")
    if required and not value.strip():
        raise FieldError(field, f"{field} must not be empty")
    from ..result import check_prompt_text

    try:
        check_prompt_text(value, field)
    except UserError as err:
        raise FieldError(field, str(err)) from None
    return value


def scheduler(field: str, name) -> str:
    """Ours ('dpm++', 'euler_a', ...) or an AUTOMATIC1111 sampler name ('DPM++ 2M', 'Euler a', ...) -> ours."""
    if not isinstance(name, str):
        raise FieldError(field, f"{field} must be a text, got {type(name).__name__}")
    key = " ".join(name.strip().lower().split())
    if key in DECODER_SCHEDULERS:
        return key
    if key in A1111_SAMPLERS:
        return A1111_SAMPLERS[key]
    ours = {v.lower(): k for k, v in SAMPLER_NAMES.items() if k in DECODER_SCHEDULERS}
    if key in ours:
        return ours[key]
    accepted = [SAMPLER_NAMES[k] for k in DECODER_SCHEDULERS]
    raise FieldError(field, f"unknown {field} {name!r}; accepted: {', '.join(accepted)} (and the other AUTOMATIC1111 "
                            f"names, mapped to the nearest of these, or ours: {', '.join(DECODER_SCHEDULERS)})")


def schedule(field: str, name) -> None:
    """AUTOMATIC1111's schedule type: any of its names is accepted (and has no effect here)."""
    if name is None or name == "":
        return
    if not isinstance(name, str) or name.strip().lower() not in A1111_SCHEDULES:
        raise FieldError(field, f"unknown {field} {name!r}; accepted: automatic (the model's own noise schedule; "
                                "AUTOMATIC1111's other schedule types are accepted and ignored)")


def adapter_key(field: str, prompt: str) -> tuple:
    """The adapters a prompt's <lora:NAME:W> tags ask for, checked: a remote client names only adapters found by name
    in the configured folders, never a path. -> the BatchKey's `loras`."""
    if "<lora:" not in prompt:
        return ()
    from ..lora import files
    from ..lora.requests import merge, split_prompt

    try:
        requests = merge(split_prompt(prompt)[1])
    except UserError as err:
        raise FieldError(field, str(err)) from None
    available = files.available()
    for request in requests:
        name = request.name
        if not files.PLAIN_NAME.match(name) or "/" in name or "\\" in name or ".." in name or _DRIVE.match(name) \
                or name.endswith(files.ADAPTER_SUFFIX):
            raise FieldError(field, f"LoRA adapter {name!r} in {field}: the server takes adapter names only, not "
                                    f"paths; available: {', '.join(sorted(available)) or 'none'}")
        if name not in available:
            raise FieldError(field, f"unknown LoRA adapter {name!r} in {field}; available: "
                                    f"{', '.join(sorted(available)) or 'none'}")
    return tuple((r.name, tuple(sorted(r.weights.items())), tuple(r.window)) for r in requests)


def size(fields: tuple[str, str], width, height, pipe, limits: Limits) -> tuple[int, int]:
    factor, model = pipe.vae_scale_factor, pipe.limits
    for field, value, most in ((fields[0], width, model.max_width), (fields[1], height, model.max_height)):
        if not isinstance(value, int) or isinstance(value, bool) or not factor <= value <= most or value % factor:
            raise FieldError(field, f"{field} must be a multiple of {factor} from {factor} to {most} for model "
                                    f"{pipe.model.name!r}, got {value!r}")
    if limits.max_pixels is not None and width * height > limits.max_pixels:
        raise FieldError(fields[0], f"{width}x{height} is {width * height} pixels; this server accepts at most "
                                    f"{limits.max_pixels} per image")
    return width, height


@dataclass(frozen=True)
class Spec:
    """A checked request: `count` images of one prompt, one row each (a random seed is drawn once, here)."""

    prompt: str
    negative: str
    seed: int  # of the first image
    prior_seed: int
    key: BatchKey
    rows: tuple

    @property
    def count(self) -> int:
        return len(self.rows)


def spec(pipe, limits: Limits, *, prompt, negative, seed_value, prior_seed_value, count, steps, guidance, sampler,
         prior_steps, prior_guidance, width, height, fields: dict) -> Spec:
    """Check one request; `fields` maps our names (prompt, negative, seed, prior_seed, count, steps, guidance,
    sampler, prior_steps, prior_guidance, width, height) to the API's field names for the messages. A value of None
    takes the model's default; a seed of None or -1 is random, a prior seed of None or -1 follows the seed."""
    name = fields.get
    prior0, decoder0 = pipe.model.prior_defaults, pipe.model.decoder_defaults
    prompt = text(name("prompt"), prompt, required=True)
    negative = text(name("negative"), negative)
    loras = adapter_key(name("prompt"), prompt)
    count = whole(name("count"), count, 1, limits.max_images)
    sched = decoder0.scheduler if sampler is None else scheduler(name("sampler"), sampler)
    steps = decoder0.steps if steps is None else whole(name("steps"), steps, 1, limits.max_steps)
    prior_steps = prior0.steps if prior_steps is None else whole(
        name("prior_steps"), prior_steps, MIN_STEPS.get(prior0.scheduler, 1), limits.max_steps)
    guidance = decoder0.guidance if guidance is None else number(name("guidance"), guidance, 0, MAX_GUIDANCE)
    prior_guidance = prior0.guidance if prior_guidance is None else number(name("prior_guidance"), prior_guidance,
                                                                           0, MAX_GUIDANCE)
    width, height = size((name("width"), name("height")), decoder0.width if width is None else width,
                         decoder0.height if height is None else height, pipe, limits)
    prior = replace(prior0, steps=prior_steps, guidance=prior_guidance)
    decoder = replace(decoder0, steps=steps, guidance=guidance, scheduler=sched, width=width, height=height)
    try:
        prior.validate()
        decoder.validate(pipe.vae_scale_factor)
        pipe.limits.check(decoder, 1)
    except UserError as err:
        raise FieldError(None, str(err)) from None
    first = seed(name("seed"), seed_value)
    first = secrets.randbelow(MAX_SEED + 1) if first is None else first
    prior_first = seed(name("prior_seed"), prior_seed_value)
    prior_first = first if prior_first is None else prior_first

    from ..conditioning import batch_rows

    try:  # the library's own checks of the prompt (e.g. nothing but LoRA tags), before anything is queued
        made, _ = batch_rows(prompt, None, negative, count, first, prior_first, [])
    except UserError as err:
        raise FieldError(name("prompt"), str(err)) from None
    rows = tuple(Row(r.prompt, r.negative, r.seed, r.prior_seed) for r in made)
    return Spec(prompt, negative, first, prior_first, BatchKey(prior, decoder, loras), rows)


def sampler_choices() -> list[tuple[str, str]]:
    """(AUTOMATIC1111 name, ours) of each decoder scheduler, the model's names first."""
    return [(SAMPLER_NAMES[k], k) for k in DECODER_SCHEDULERS]
