"""Loading a pipeline: a preset (imagegen.presets) names a model in the diffusers Kandinsky 2.2 layout, one
*prior* folder and one *decoder* folder:

    prior/    model_index.json  text_encoder/ tokenizer/ prior/ image_encoder/ image_processor/ scheduler/
    decoder/  model_index.json  unet/ scheduler/ movq/   (movq: VQModel as in Kandinsky 2.2, or an AutoencoderKL)

Each component is built by the class that model_index.json names, from an allow-list, and weights are read from
safetensors only (`use_safetensors=True`: nothing is unpickled). Real checkpoints and the embedded model take the
same path; a hub id is first resolved to its snapshot folder in the local Hugging Face cache.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .presets import find_preset
from .settings import RuntimeSettings

PRIOR_COMPONENTS = ("text_encoder", "tokenizer", "prior", "image_encoder", "image_processor", "scheduler")
DECODER_COMPONENTS = ("unet", "scheduler", "movq")
VAE_NAMES = ("movq", "vae")  # Kandinsky calls its VAE "movq"; Stable Diffusion style folders call it "vae"

ALLOWED_CLASSES = {
    "transformers": {
        "CLIPTextModelWithProjection", "CLIPVisionModelWithProjection", "CLIPTokenizer", "CLIPTokenizerFast",
        "CLIPImageProcessor", "CLIPImageProcessorFast",
    },
    "diffusers": {
        "PriorTransformer", "UNet2DConditionModel", "VQModel", "AutoencoderKL",
        "UnCLIPScheduler", "DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler",
        "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "UniPCMultistepScheduler",
    },
}
MODEL_KINDS = {"CLIPTextModelWithProjection", "CLIPVisionModelWithProjection", "PriorTransformer",
               "UNet2DConditionModel", "VQModel", "AutoencoderKL"}
TORCH_DTYPES = ("float32", "float16", "bfloat16")


def resolve_folder(ref: str) -> Path:
    """A local folder as it is; a hub id -> its snapshot folder (from the local cache when offline)."""
    path = Path(ref)
    if path.is_dir():
        return path
    if path.is_absolute() or ref.startswith(".") or ref.count("/") != 1:
        raise UserError(f"model folder {ref!r} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))
    except Exception as err:  # offline with no cached copy, unknown repo, no network
        raise UserError(
            f"cannot find {ref!r} in the local Hugging Face cache ({type(err).__name__}); download it once where the "
            "hub is reachable, or pass a local model folder"
        ) from None


def read_model_index(folder: Path, required: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise UserError(f"model folder {str(folder)!r} has no model_index.json (expected the diffusers layout)")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {str(index_file)!r} as JSON: {err}") from None
    if not isinstance(index, dict):
        raise UserError(f"{str(index_file)!r} is not a JSON object of components")
    components = {k: tuple(v) for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0]}
    if "movq" in required and "movq" not in components and "vae" in components:
        required = tuple("vae" if name == "movq" else name for name in required)
    for name in required:
        if name not in components:
            raise UserError(f"model folder {str(folder)!r} is missing the component '{name}' in model_index.json")
        if not (folder / name).is_dir():
            raise UserError(f"model folder {str(folder)!r} is missing the component folder '{name}/'")
        library, class_name = components[name]
        if class_name not in ALLOWED_CLASSES.get(library, ()):
            raise UserError(f"component '{name}' in {str(folder)!r} has class {library}.{class_name}, which imagegen does not load")
    return {name: components[name] for name in required}


def _load_component(folder: Path, name: str, library: str, class_name: str, torch_dtype):
    module = __import__(library)
    cls = getattr(module, class_name)
    sub = folder / name
    if class_name in MODEL_KINDS:
        if library == "transformers":
            return cls.from_pretrained(sub, dtype=torch_dtype, use_safetensors=True, attn_implementation="sdpa")
        return cls.from_pretrained(sub, torch_dtype=torch_dtype, use_safetensors=True)
    return cls.from_pretrained(sub)


def load_components(folder: Path, required: tuple[str, ...], dtype: str, device: str) -> dict:
    """Every component of one folder, models in eval mode on `device` in `dtype`. VAE comes back as 'vae'."""
    import diffusers.utils.logging
    import torch
    import transformers.utils.logging

    # A load takes well under a second; per-tensor "Loading weights" bars would only bury the generation bar.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    torch_dtype = getattr(torch, dtype)
    index = read_model_index(folder, required)
    components = {}
    for name, (library, class_name) in index.items():
        try:
            component = _load_component(folder, name, library, class_name, torch_dtype)
        except (OSError, ValueError, EnvironmentError, TypeError, KeyError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"cannot load component '{name}' from {str(folder / name)!r}: {first_line}") from None
        if class_name in MODEL_KINDS:
            component = component.to(device).eval().requires_grad_(False)
        components["vae" if name in VAE_NAMES else name] = component
    return components


FINGERPRINT_SAMPLE_BYTES = 1 << 16  # read at both ends of every weight file's tensor data


def sample_weights_file(path: Path, digest) -> None:
    """Feed a safetensors file's identity to a hash: its header, the first and last 64 KiB of tensor data, its size.
    Cheap for multi-GB checkpoints, and any retraining changes it."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        (header_length,) = struct.unpack("<Q", f.read(8))
        digest.update(f.read(header_length))
        digest.update(f.read(FINGERPRINT_SAMPLE_BYTES))
        f.seek(max(8 + header_length, size - FINGERPRINT_SAMPLE_BYTES))
        digest.update(f.read())
    digest.update(str(size).encode())


def fingerprint(folders) -> str:
    """A short identity of a model's weights: every safetensors file of its folders, sampled."""
    import hashlib

    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.safetensors")):
            sample_weights_file(path, digest)
    return digest.hexdigest()[:16]


@dataclass
class LoadedModel:
    """The components of both folders, plus where they came from."""

    components: dict
    prior_folder: Path
    decoder_folder: Path


def load_model(prior_ref: str, decoder_ref: str, dtype: str, device: str) -> LoadedModel:
    prior_folder = resolve_folder(prior_ref)
    decoder_folder = resolve_folder(decoder_ref)
    # Read both indexes before loading any weights, so a broken folder fails fast.
    read_model_index(prior_folder, PRIOR_COMPONENTS)
    read_model_index(decoder_folder, DECODER_COMPONENTS)
    prior_parts = load_components(prior_folder, PRIOR_COMPONENTS, dtype, device)
    decoder_parts = load_components(decoder_folder, DECODER_COMPONENTS, dtype, device)
    prior_parts["prior_scheduler"] = prior_parts.pop("scheduler")
    decoder_parts["decoder_scheduler"] = decoder_parts.pop("scheduler")
    components = {**prior_parts, **decoder_parts}
    return LoadedModel(components=components, prior_folder=prior_folder, decoder_folder=decoder_folder)


def load_pipeline(model: str = "shapes", *, device: str = "cpu", dtype: str = "auto", attention: str = "auto"):
    """A ready UnCLIPPipeline for a preset name, a preset .toml file or a model folder."""
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

    from .pipeline import ModelInfo, UnCLIPPipeline

    loaded = load_model(preset.prior, preset.decoder, runtime.resolved_dtype, runtime.device)
    ref = model if preset.source.endswith(f"{model}.toml") and "/" not in model else str(Path(model).resolve())
    info = ModelInfo(name=preset.name, ref=ref, folders=(str(loaded.prior_folder), str(loaded.decoder_folder)),
                     prior_defaults=preset.prior_defaults, decoder_defaults=preset.decoder_defaults)
    pipe = UnCLIPPipeline(loaded.components, info, runtime, attention_backend=backend)
    apply_attention([pipe.prior, pipe.unet, pipe.vae], backend)
    return pipe
