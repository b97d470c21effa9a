"""Guidance interval, guidance rescale and prior noise (imagegen.guidance): off by default, exactly today's formula."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from imagegen import schedulers
from imagegen.errors import UserError
from imagegen.guidance import Guidance
from imagegen.record import GenerationRecord
from imagegen.settings import DecoderSettings, PriorSettings


def test_the_interval_selects_steps_by_their_fraction_of_the_loop():
    assert [Guidance(4.0, steps=4).at(i) for i in range(4)] == [True] * 4
    assert [Guidance(4.0, 0.25, 0.75, steps=4).at(i) for i in range(4)] == [False, True, True, False]
    assert not any(Guidance(1.0, steps=4).at(i) for i in range(4)) and not Guidance(1.0, steps=4).enabled
    assert not Guidance(4.0, 0.9, 1.0, steps=4).enabled  # no step falls in [0.9, 1): nothing is guided


def test_combine_is_the_plain_formula_unless_rescaled():
    u, c = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    assert torch.equal(Guidance(4.0).combine(u, c), u + 4.0 * (c - u))
    rescaled = Guidance(4.0, rescale=1.0).combine(u, c)
    assert torch.allclose(rescaled.std(dim=(1, 2, 3)), c.std(dim=(1, 2, 3)), atol=1e-5)
    half = Guidance(4.0, rescale=0.5).combine(u, c)
    assert torch.allclose(half, 0.5 * rescaled + 0.5 * (u + 4.0 * (c - u)), atol=1e-5)


@pytest.mark.parametrize("settings,message", [
    (DecoderSettings(guidance_start=0.6, guidance_stop=0.4), "guidance start must be below its stop"),
    (DecoderSettings(guidance_stop=1.5), "guidance stop must be a number from 0 to 1"),
    (DecoderSettings(guidance_rescale=-0.1), "guidance rescale must be a number from 0 to 1"),
    (PriorSettings(guidance_start=float("nan")), "prior guidance start must be a number from 0 to 1"),
    (PriorSettings(noise=0.0), "prior noise must be a finite number > 0"),
])
def test_bad_guidance_settings_are_refused(settings, message):
    with pytest.raises(UserError, match=message):
        settings.validate()


def test_the_new_fields_round_trip_through_the_infotext():
    record = GenerationRecord(prompt="a red circle", negative_prompt="", seed=1, prior_seed=2, model="shapes",
                              prior=PriorSettings(guidance_start=0.2, noise=1.5),
                              decoder=DecoderSettings(width=64, height=64, guidance_start=0.3, guidance_stop=0.9,
                                                      guidance_rescale=0.7))
    text = record.to_infotext()
    assert "CFG start: 0.3" in text and "CFG rescale: 0.7" in text and "Prior noise: 1.5" in text
    assert GenerationRecord.from_infotext(text) == record


class Spy:
    """Records the batch size of every U-Net and prior call and every prediction handed to the schedulers."""

    def __init__(self, pipe, monkeypatch):
        self.unet_rows, self.prior_rows, self.unet_outputs, self.stepped = [], [], [], []
        unet, prior = pipe.unet.forward, pipe.prior.forward

        def unet_forward(sample, *args, **kwargs):
            self.unet_rows.append(sample.shape[0])
            out = unet(sample, *args, **kwargs)
            self.unet_outputs.append(out.sample.clone())
            return out

        def prior_forward(sample, *args, **kwargs):
            self.prior_rows.append(sample.shape[0])
            return prior(sample, *args, **kwargs)

        monkeypatch.setattr(pipe.unet, "forward", unet_forward)
        monkeypatch.setattr(pipe.prior, "forward", prior_forward)
        make = schedulers.stepper

        def stepper(scheduler):
            step = make(scheduler)

            def recorded(model_output, *args):
                self.stepped.append(model_output.clone())
                return step(model_output, *args)

            return recorded

        monkeypatch.setattr(schedulers, "stepper", stepper)


def test_default_settings_run_exactly_the_old_loop(tiny_pipe, fast_settings, monkeypatch):
    """At the defaults every step runs both halves and hands the scheduler u + g (c - u), bit for bit: the pixels
    of the old loop (which the diffusers comparison in test_pipeline also pins)."""
    prior, decoder = fast_settings
    spy = Spy(tiny_pipe, monkeypatch)
    tiny_pipe("a red circle", num_images=2, seed=3, prior=prior, decoder=decoder, progress=False)
    assert spy.prior_rows == [4] * prior.steps and spy.unet_rows == [4] * decoder.steps
    channels = tiny_pipe.unet.config.in_channels
    for output, stepped in zip(spy.unet_outputs, spy.stepped[prior.steps:]):
        unconditional, conditional = output[:, :channels].chunk(2)
        assert torch.equal(stepped[:, :channels], unconditional + decoder.guidance * (conditional - unconditional))


def test_outside_the_interval_only_the_conditional_half_is_computed(tiny_pipe, fast_settings, monkeypatch):
    prior, decoder = fast_settings
    spy = Spy(tiny_pipe, monkeypatch)
    interval = dict(guidance_start=0.25, guidance_stop=0.75)
    windowed = tiny_pipe("a red circle", num_images=2, seed=3, prior=replace(prior, **interval),
                         decoder=replace(decoder, **interval), progress=False)
    assert spy.prior_rows == [2, 4, 4, 2] and spy.unet_rows == [2, 4, 4, 2]
    plain = tiny_pipe("a red circle", num_images=2, seed=3, prior=prior, decoder=decoder, progress=False)
    assert not np.array_equal(windowed.pixels, plain.pixels) and np.isfinite(windowed.pixels).all()
    assert windowed.records[0].decoder.guidance_start == 0.25  # recorded with the image


def test_prior_noise_and_rescale_change_the_image_and_stay_finite(tiny_pipe, fast_settings):
    prior, decoder = fast_settings
    plain = tiny_pipe("a red circle", seed=3, prior=prior, decoder=decoder, progress=False).pixels
    for p, d in ((replace(prior, noise=1.5), decoder), (replace(prior, guidance_rescale=0.7),
                                                       replace(decoder, guidance_rescale=0.7))):
        changed = tiny_pipe("a red circle", seed=3, prior=p, decoder=d, progress=False).pixels
        assert np.isfinite(changed).all() and not np.array_equal(changed, plain)
