"""What only a CUDA GPU can show (run with `pytest -m gpu`; benchmarks/gpu_check.sh runs them first):

* xformers' memory-efficient attention is really called when it is the backend (its calls are counted);
* a real float16 overflow in the VAE decode (non-finite pixels, not a mocked NaN) is decoded again in float32.

Skipped with a reason where torch sees no CUDA device. xformers is imported inside the tests only, so collecting
this file on a CPU machine imports nothing of it.
"""
import copy
import importlib.util
import logging

import numpy as np
import pytest
import torch

CUDA = torch.cuda.is_available()
NO_CUDA = "needs a CUDA GPU: torch.cuda.is_available() is False"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason=NO_CUDA)]
NO_XFORMERS = "xformers is not installed (pip install 'imagegen[gpu]')"
needs_xformers = pytest.mark.skipif(not CUDA or importlib.util.find_spec("xformers") is None,
                                    reason=NO_CUDA if not CUDA else NO_XFORMERS)
# Latent magnitudes tried, smallest first, for one whose float16 decode overflows while float32's stays finite.
OVERFLOW_SCALES = (1e3, 3e3, 1e4, 3e4, 6e4)


def short_settings():
    from imagegen.settings import DecoderSettings, PriorSettings

    return PriorSettings(steps=3, guidance=4.0), DecoderSettings(steps=3, guidance=4.0, width=64, height=64)


def attention_modules(model) -> int:
    from diffusers.models.attention_processor import Attention

    return sum(isinstance(m, Attention) for m in model.modules())


@needs_xformers
def test_auto_attention_on_cuda_picks_xformers():
    from imagegen.attention import resolve_attention, xformers_usable

    assert xformers_usable(), "xformers is installed but does not run with this torch/GPU"
    assert resolve_attention("auto", "cuda") == "xformers"


@needs_xformers
def test_xformers_is_actually_called(monkeypatch):
    import xformers.ops

    import imagegen
    from imagegen.attention import attention_processor_names

    pipe = imagegen.load_pipeline("shapes", device="cuda", dtype="float16", attention="xformers")
    assert pipe.attention_backend == "xformers"
    for model in (pipe.prior, pipe.unet, pipe.vae):
        names = attention_processor_names(model)
        assert names and all(name.startswith("XFormers") for name in names), names
    calls = []
    original = xformers.ops.memory_efficient_attention

    def counting(query, *args, **kwargs):
        calls.append(tuple(query.shape))
        return original(query, *args, **kwargs)

    monkeypatch.setattr(xformers.ops, "memory_efficient_attention", counting)
    prior, decoder = short_settings()
    result = pipe("a red circle", seed=0, prior=prior, decoder=decoder, progress=False)
    assert np.isfinite(result.pixels).all()
    # Every attention layer of every U-Net forward (and of the prior's and the VAE's) went through xformers.
    least = decoder.steps * attention_modules(pipe.unet) + prior.steps * attention_modules(pipe.prior)
    assert len(calls) >= least, f"{len(calls)} xformers calls, expected at least {least}"


def test_half_precision_nan_is_decoded_again_in_float32(caplog):
    import imagegen

    pipe = imagegen.load_pipeline("shapes", device="cuda", dtype="float16", attention="sdpa")
    assert pipe.vae.dtype == torch.float16
    vae32 = copy.deepcopy(pipe.vae).float()
    base = torch.randn(1, pipe.vae.config.latent_channels, 8, 8, device="cuda",
                       generator=torch.Generator("cuda").manual_seed(0))
    latents = None
    with torch.inference_mode():
        for scale in OVERFLOW_SCALES:
            candidate = (base * scale).half()
            half, full = pipe.vae_decode(pipe.vae, candidate), pipe.vae_decode(vae32, candidate.float())
            if not torch.isfinite(half).all() and torch.isfinite(full).all():
                latents, expected = candidate, full
                break
    assert latents is not None, f"no latent scale in {OVERFLOW_SCALES} overflows the float16 VAE decode"

    with caplog.at_level(logging.WARNING, logger="imagegen"), torch.inference_mode():
        pixels = pipe.decode(latents)
    assert np.isfinite(pixels).all()
    assert "decoded again in float32" in caplog.text
    assert pipe.vae.dtype == torch.float16  # back in half precision for the next call
    expected = (expected * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    assert np.abs(pixels - expected).max() < 1e-5  # the float32 decode's pixels, not a clamp of garbage
