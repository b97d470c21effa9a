"""The generation pipeline against diffusers' Kandinsky 2.2 pipelines, and its seeds, schedulers and unCLIP mixing."""
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline
from PIL import Image

from imagegen.errors import UserError
from imagegen.result import MixItem
from imagegen.settings import DECODER_SCHEDULERS

PROMPT = "a red circle"


def diffusers_reference(model_dir, prompt, negative, n, seed, prior_seed, prior, decoder):
    """What diffusers' two Kandinsky 2.2 pipelines make with per-image generators seeded like imagegen's."""
    prior_pipe = KandinskyV22PriorPipeline.from_pretrained(model_dir / "prior")
    decoder_pipe = KandinskyV22Pipeline.from_pretrained(model_dir / "decoder")
    for p in (prior_pipe, decoder_pipe):
        p.set_progress_bar_config(disable=True)
    prior_generators = [torch.Generator().manual_seed(prior_seed + i) for i in range(n)]
    if negative:  # diffusers samples the negative prompt in the same batch, one generator per row
        prior_generators += [torch.Generator().manual_seed(prior_seed + i) for i in range(n)]
    embeds = prior_pipe(prompt, negative_prompt=negative or None, num_images_per_prompt=n,
                        num_inference_steps=prior.steps, guidance_scale=prior.guidance, generator=prior_generators)
    return decoder_pipe(image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds,
                        height=decoder.height, width=decoder.width, num_inference_steps=decoder.steps,
                        guidance_scale=decoder.guidance, output_type="np",
                        generator=[torch.Generator().manual_seed(seed + i) for i in range(n)]).images


@pytest.mark.parametrize("negative,guidance", [("", 4.0), ("blue square", 4.0), ("", 1.0)])
def test_matches_diffusers_kandinsky22_pipelines(tiny_pipe, tiny_model_dir, fast_settings, negative, guidance):
    prior, decoder = fast_settings
    prior, decoder = replace(prior, guidance=guidance), replace(decoder, guidance=guidance)
    ours = tiny_pipe(PROMPT, negative_prompt=negative, num_images=2, seed=7, prior_seed=11, prior=prior,
                     decoder=decoder, progress=False)
    reference = diffusers_reference(tiny_model_dir, PROMPT, negative, 2, 7, 11, prior, decoder)
    assert ours.pixels.shape == reference.shape == (2, 32, 32, 3)
    assert reference.std() > 0.05  # a real image, not a constant
    assert np.abs(ours.pixels - reference).max() <= 1e-4


def test_image_i_uses_seed_plus_i_and_seeds_are_independent(tiny_pipe, fast_settings):
    prior, decoder = fast_settings
    batch = tiny_pipe(PROMPT, num_images=2, seed=5, prior_seed=9, prior=prior, decoder=decoder, progress=False)
    assert batch.seeds == [5, 6] and batch.prior_seeds == [9, 10]
    second = tiny_pipe(PROMPT, num_images=1, seed=6, prior_seed=10, prior=prior, decoder=decoder, progress=False)
    # Same noise, so the same image up to float rounding (CPU kernels round differently per batch size; that is
    # why --from-png re-runs the whole batch for bit-exactness).
    assert np.abs(batch.pixels[1] - second.pixels[0]).max() < 2e-3
    other_prior = tiny_pipe(PROMPT, num_images=1, seed=6, prior_seed=11, prior=prior, decoder=decoder, progress=False)
    other_decoder = tiny_pipe(PROMPT, num_images=1, seed=7, prior_seed=10, prior=prior, decoder=decoder, progress=False)
    assert np.abs(other_prior.pixels[0] - second.pixels[0]).max() > 1e-3
    assert np.abs(other_decoder.pixels[0] - second.pixels[0]).max() > 1e-3


def test_same_seed_gives_identical_images(tiny_pipe, fast_settings):
    prior, decoder = fast_settings
    a = tiny_pipe(PROMPT, seed=3, prior=prior, decoder=decoder, progress=False)
    b = tiny_pipe(PROMPT, seed=3, prior=prior, decoder=decoder, progress=False)
    assert np.array_equal(a.pixels, b.pixels)
    assert a.records[0].seed == 3 and a.records[0].prior_seed == 3


@pytest.mark.parametrize("name", list(DECODER_SCHEDULERS))
def test_every_decoder_scheduler_denoises_and_is_reset_between_calls(tiny_pipe, fast_settings, name):
    prior, decoder = fast_settings
    decoder = replace(decoder, scheduler=name)
    result = tiny_pipe(PROMPT, seed=1, prior=prior, decoder=decoder, progress=False)
    assert np.isfinite(result.pixels).all()
    assert result.records[0].decoder.scheduler == name
    again = tiny_pipe(PROMPT, seed=1, prior=prior, decoder=decoder, progress=False)  # same scheduler instance
    assert np.array_equal(result.pixels, again.pixels)


def test_prior_ddpm_scheduler_differs_from_unclip_but_is_finite(tiny_pipe, fast_settings):
    prior, _ = fast_settings
    seeds = [4]
    unclip = tiny_pipe.sample_prior([PROMPT], [""], seeds, prior)
    ddpm = tiny_pipe.sample_prior([PROMPT], [""], seeds, replace(prior, scheduler="ddpm"))
    assert torch.isfinite(ddpm).all() and not torch.allclose(unclip, ddpm)


def test_mixing_is_the_weighted_sum_of_image_embeddings(tiny_pipe, fast_settings):
    prior, _ = fast_settings
    seeds = [0, 1]
    red, _ = tiny_pipe.image_embeddings([[MixItem(text="a red circle")]] * 2, ["", ""], seeds, prior)
    blue, _ = tiny_pipe.image_embeddings([[MixItem(text="a blue square")]] * 2, ["", ""], seeds, prior)
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    picture = tiny_pipe.embed_image(image)
    mixed, negative = tiny_pipe.image_embeddings(
        [[MixItem(text="a red circle", weight=0.7), MixItem(text="a blue square", weight=0.3),
         MixItem(image=image, weight=0.5)]] * 2, ["", ""], seeds, prior)
    assert torch.allclose(mixed, 0.7 * red + 0.3 * blue + 0.5 * picture, atol=1e-6)
    assert torch.equal(negative, tiny_pipe.zero_image_embed().repeat(2, 1))


def test_variations_follow_the_image_embedding(tiny_pipe, fast_settings):
    prior, decoder = fast_settings
    image = Image.new("RGB", (32, 32), (30, 30, 220))
    result = tiny_pipe(mix=[MixItem(image=image, image_path="blue.png")], seed=2, prior=prior, decoder=decoder,
                       progress=False)
    expected = tiny_pipe.image_encoder(
        tiny_pipe.image_processor(images=image, return_tensors="pt").pixel_values).image_embeds
    assert torch.allclose(tiny_pipe.embed_image(image), expected)
    assert [m.to_dict() for m in result.records[0].mix] == [{"image": "blue.png", "weight": 1.0}]
    assert result.records[0].prompt == "image blue.png:1"


def test_single_weight_one_mix_equals_plain_prompt(tiny_pipe, fast_settings):
    prior, decoder = fast_settings
    plain = tiny_pipe(PROMPT, seed=8, prior=prior, decoder=decoder, progress=False)
    mixed = tiny_pipe(mix=[MixItem(text=PROMPT, weight=1.0)], seed=8, prior=prior, decoder=decoder, progress=False)
    assert np.array_equal(plain.pixels, mixed.pixels)


def test_overlong_prompt_is_truncated_with_a_warning_naming_dropped_words(tiny_pipe, fast_settings, caplog):
    prior, decoder = fast_settings
    prompt = "a red circle " + "x" * 40 + " zebra"  # the tiny tokenizer spends one token per character
    with caplog.at_level(logging.WARNING, logger="imagegen"):
        tiny_pipe(prompt, seed=0, prior=prior, decoder=decoder, progress=False)
    assert "dropped" in caplog.text and "zebra" in caplog.text


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt=""), "must not be empty"),
    (dict(prompt=None), "nothing to generate"),
    (dict(prompt=PROMPT, num_images=0), "number of images"),
    (dict(prompt=PROMPT, seed=2**32), "seed must be a whole number from 0 to 4294967295"),
    (dict(prompt=PROMPT, seed=-1), "seed"),
    (dict(prompt=PROMPT, mix=[MixItem(text="b")]), "either a prompt or mix items"),
    (dict(mix=[MixItem(text="b", weight=float("nan"))]), "finite number"),
])
def test_bad_calls_raise_one_line_user_errors(tiny_pipe, fast_settings, kwargs, message):
    prior, decoder = fast_settings
    with pytest.raises(UserError, match=message) as err:
        tiny_pipe(**kwargs, prior=prior, decoder=decoder, progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("field,value,message", [
    ("width", 33, "width must be a positive multiple of 2"), ("height", 0, "height must be a positive multiple"),
    ("steps", 0, "steps must be a whole number >= 1"), ("guidance", -1.0, "guidance must be a finite number >= 0"),
    ("scheduler", "plms", "unknown scheduler 'plms'; choose one of: ddpm, ddim, dpm\\+\\+, euler"),
])
def test_bad_decoder_settings_are_refused(tiny_pipe, fast_settings, field, value, message):
    prior, decoder = fast_settings
    with pytest.raises(UserError, match=message):
        tiny_pipe(PROMPT, prior=prior, decoder=replace(decoder, **{field: value}), progress=False)


def test_half_precision_vae_nan_is_decoded_again_in_float32(tiny_model_dir, caplog, monkeypatch):
    import imagegen
    from imagegen.pipeline import UnCLIPPipeline

    pipe = imagegen.load_pipeline(str(tiny_model_dir), dtype="bfloat16")
    latents = torch.randn(1, 4, 16, 16, dtype=torch.bfloat16)
    real_decode = UnCLIPPipeline.vae_decode
    calls = []

    def nan_in_half_precision(vae, z):
        calls.append(vae.dtype)
        out = real_decode(vae, z)
        return out * float("nan") if vae.dtype != torch.float32 else out

    monkeypatch.setattr(UnCLIPPipeline, "vae_decode", staticmethod(nan_in_half_precision))
    with caplog.at_level(logging.WARNING, logger="imagegen"):
        pixels = pipe.decode(latents)
    assert calls == [torch.bfloat16, torch.float32]
    assert np.isfinite(pixels).all() and "decoded again in float32" in caplog.text
    assert pipe.vae.dtype == torch.bfloat16  # restored for the next image


def test_text_reading_decoder_gets_the_prompt_tokens(tmp_path, fast_settings):
    """A Kandinsky-2.1-style U-Net (text_image_proj) cross-attends to the prompt's tokens; the unconditional half to
    the negative prompt's."""
    import imagegen
    from imagegen.build.tiny import save_tiny_model

    pipe = imagegen.load_pipeline(str(save_tiny_model(tmp_path / "t", reads_text=True)))
    prior, decoder = fast_settings
    assert pipe.decoder_reads_text
    embeds = pipe.zero_image_embed().repeat(1, 1) + 0.1
    seeds = [3]
    red = pipe.denoise(embeds, embeds * 0, seeds, decoder, None, pipe.decoder_text_states([[MixItem(text="a red circle")]], [""]))
    blue = pipe.denoise(embeds, embeds * 0, seeds, decoder, None, pipe.decoder_text_states([[MixItem(text="a blue star")]], [""]))
    assert (red - blue).abs().max() > 1e-4  # same image embedding, different tokens
    negative, positive = pipe.decoder_text_states([[MixItem(text="a red circle")]] * 2, ["dark", "dark"])
    dark, red_tokens = pipe.encode_text(["dark"])[1], pipe.encode_text(["a red circle"])[1]
    assert torch.equal(negative[1], dark[0]) and torch.equal(positive[0], red_tokens[0])
    result = pipe(PROMPT, seed=1, prior=prior, decoder=decoder, progress=False)
    assert np.isfinite(result.pixels).all()
