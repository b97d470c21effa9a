"""Choosing the attention kernel: xformers' memory-efficient attention on CUDA, PyTorch SDPA everywhere else.

xformers is imported only on the CUDA path: its PyPI wheels are built for one torch release and run only on CUDA.
The transformers CLIP towers always use SDPA (`attn_implementation="sdpa"`); the choice here applies to the
diffusers models (prior, U-Net, VAE).
"""
from __future__ import annotations

import importlib.util

from .errors import UserError


def xformers_usable() -> bool:
    """True when xformers imports and runs one small attention call on the current CUDA device."""
    if importlib.util.find_spec("xformers") is None:
        return False
    try:
        import torch
        import xformers.ops

        q = torch.zeros(1, 2, 1, 8, device="cuda", dtype=torch.float16)
        xformers.ops.memory_efficient_attention(q, q, q)
        return True
    except Exception:  # any failure (wrong torch build, no kernel for this GPU) means: do not use it
        return False


def resolve_attention(requested: str, device: str) -> str:
    """auto | sdpa | xformers -> the backend to use; xformers asked for where it cannot run is an error."""
    on_cuda = device.startswith("cuda")
    if requested == "sdpa":
        return "sdpa"
    if requested == "xformers":
        if not on_cuda:
            raise UserError(f"attention 'xformers' needs a CUDA device, got device {device!r}; use --attention sdpa or auto")
        if importlib.util.find_spec("xformers") is None:
            raise UserError("attention 'xformers' asked for but xformers is not installed; pip install 'imagegen[gpu]' or use --attention sdpa")
        if not xformers_usable():
            raise UserError("attention 'xformers' asked for but xformers does not run with this torch/GPU; use --attention sdpa")
        return "xformers"
    if requested == "auto":
        return "xformers" if on_cuda and xformers_usable() else "sdpa"
    raise UserError(f"unknown attention {requested!r}; use one of: auto, sdpa, xformers")


def apply_attention(models, backend: str) -> None:
    """Switch diffusers models to the backend.

    SDPA needs no switch: freshly loaded diffusers models on torch 2 already use the `*2_0` processors, which call
    `torch.nn.functional.scaled_dot_product_attention` (and diffusers' own "disable xformers" would replace the
    added-key/value processors of Kandinsky's U-Net with plain ones).
    """
    if backend == "xformers":
        for model in models:
            model.enable_xformers_memory_efficient_attention()


def attention_processor_names(model) -> set[str]:
    """Class names of every attention processor inside a model (VQModel has no `attn_processors` listing)."""
    from diffusers.models.attention_processor import Attention

    return {type(m.processor).__name__ for m in model.modules() if isinstance(m, Attention)}
