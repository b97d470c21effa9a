"""Building a pipeline from a preset: resolve the model, pick device, dtype and attention, load the components."""
from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .presets import find_preset
from .settings import RuntimeSettings


def load_pipeline(model: str = "shapes", *, device: str = "cpu", dtype: str = "auto", attention: str = "auto"):
    from .attention import apply_attention, resolve_attention

    runtime = RuntimeSettings(device=device, dtype=dtype, attention=attention)
    runtime.validate()
    preset = find_preset(model)
    backend = resolve_attention(runtime.attention, runtime.device)

    import torch

    if runtime.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {runtime.device!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    if runtime.device == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' asked for, but it is not available; use --device cpu")

    from .loading import load_model
    from .pipeline import ModelInfo, UnCLIPPipeline

    loaded = load_model(preset.prior, preset.decoder, runtime.resolved_dtype, runtime.device)
    ref = model if preset.source.endswith(f"{model}.toml") and "/" not in model else str(Path(model).resolve())
    info = ModelInfo(name=preset.name, ref=ref, folders=(str(loaded.prior_folder), str(loaded.decoder_folder)),
                     prior_defaults=preset.prior_defaults, decoder_defaults=preset.decoder_defaults)
    pipe = UnCLIPPipeline(loaded.components, info, runtime, attention_backend=backend)
    apply_attention([pipe.prior, pipe.unet, pipe.vae], backend)
    pipe.prior_folder, pipe.decoder_folder = loaded.prior_folder, loaded.decoder_folder
    return pipe
