"""One sampling contract over diffusers' schedulers: `make_scheduler()` by name, `step()` with per-image generators.

Schedulers keep state (timesteps, step index, multistep history), so every generation gets a fresh instance built
from the configuration the model shipped with.
"""
from __future__ import annotations

import inspect

from .settings import DECODER_SCHEDULERS, PRIOR_SCHEDULERS

LEARNED_VARIANCE_TYPES = ("learned", "learned_range")


def make_scheduler(shipped, name: str, table: dict[str, str]):
    """A new scheduler of the named kind, configured like the model's own `shipped` scheduler."""
    import diffusers

    cls = getattr(diffusers, table[name])
    config = dict(shipped.config)
    if cls is not diffusers.DDPMScheduler and config.get("variance_type") in LEARNED_VARIANCE_TYPES:
        # Only DDPM samples with the U-Net's learned variance; DPM-Solver would otherwise slice the output as if it
        # were RGB pixels. The pipeline drops the variance channels for every other scheduler.
        config["variance_type"] = None
    return cls.from_config(config)


def make_prior_scheduler(shipped, name: str):
    return make_scheduler(shipped, name, PRIOR_SCHEDULERS)


def make_decoder_scheduler(shipped, name: str):
    return make_scheduler(shipped, name, DECODER_SCHEDULERS)


def uses_learned_variance(scheduler) -> bool:
    """True when the scheduler wants the U-Net's predicted variance channels along with the noise."""
    accepts = "variance_type" in inspect.signature(type(scheduler).__init__).parameters
    return accepts and getattr(scheduler.config, "variance_type", None) in LEARNED_VARIANCE_TYPES


def step(scheduler, model_output, timestep, sample, next_timestep, generators):
    """One denoising step. `next_timestep` is what unCLIP's scheduler needs to skip steps; the others derive it."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "generator" in accepted:
        kwargs["generator"] = generators
    if "prev_timestep" in accepted:
        kwargs["prev_timestep"] = next_timestep
    return scheduler.step(model_output, timestep, sample, **kwargs).prev_sample
