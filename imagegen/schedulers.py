"""One sampling contract over diffusers' schedulers: `make_scheduler()` by name, `step()` with per-image generators.

Schedulers keep state (timesteps, step index, multistep history); `set_timesteps()` resets it, which is how
diffusers' pipelines reuse one instance. The pipeline keeps one instance per name, built from the configuration
the model shipped with.
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


def stepper(scheduler):
    """`step(model_output, t, sample, next_t, generators) -> prev_sample` for this scheduler.

    Schedulers differ in what step() accepts: unCLIP's needs the next timestep to skip steps, UniPC takes no
    generator. The signature is read once here, not on every step (inspect costs ~0.1 ms a call).
    """
    accepted = inspect.signature(scheduler.step).parameters
    takes_generator, takes_next = "generator" in accepted, "prev_timestep" in accepted

    def step(model_output, timestep, sample, next_timestep, generators):
        kwargs = {}
        if takes_generator:
            kwargs["generator"] = generators
        if takes_next:
            kwargs["prev_timestep"] = next_timestep
        return scheduler.step(model_output, timestep, sample, **kwargs).prev_sample

    return step
