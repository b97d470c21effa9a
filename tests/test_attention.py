"""Attention selection: auto -> SDPA on the CPU, xformers only on CUDA, and never imported on the CPU path."""
import importlib.util
import sys

import pytest

from imagegen import attention
from imagegen.attention import attention_processor_names, resolve_attention
from imagegen.errors import UserError


def test_auto_on_cpu_is_sdpa():
    assert resolve_attention("auto", "cpu") == "sdpa"
    assert resolve_attention("sdpa", "cuda") == "sdpa"


def test_xformers_without_cuda_is_a_clear_error():
    with pytest.raises(UserError, match="attention 'xformers' needs a CUDA device, got device 'cpu'"):
        resolve_attention("xformers", "cpu")


def test_xformers_on_cuda_without_the_package_is_a_clear_error(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xformers" else real_find_spec(name, *a))
    with pytest.raises(UserError, match=r"xformers is not installed; pip install 'imagegen\[gpu\]'"):
        resolve_attention("xformers", "cuda")
    assert resolve_attention("auto", "cuda") == "sdpa"


def test_auto_on_cuda_takes_xformers_only_when_it_runs(monkeypatch):
    monkeypatch.setattr(attention, "xformers_usable", lambda: True)
    assert resolve_attention("auto", "cuda:0") == "xformers"
    monkeypatch.setattr(attention, "xformers_usable", lambda: False)
    assert resolve_attention("auto", "cuda:0") == "sdpa"


def test_cpu_pipeline_uses_sdpa_processors_and_never_imports_xformers(tiny_pipe, fast_settings):
    prior, decoder = fast_settings
    tiny_pipe("a red circle", seed=0, prior=prior, decoder=decoder, progress=False)
    assert tiny_pipe.attention_backend == "sdpa"
    for model in (tiny_pipe.prior, tiny_pipe.unet, tiny_pipe.vae):
        names = attention_processor_names(model)
        assert names and all(name.endswith("2_0") for name in names), names  # torch SDPA processors
    assert "xformers" not in sys.modules
