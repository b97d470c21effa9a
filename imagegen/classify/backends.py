"""CLIP backends: the text tower and image tower that zero-shot classification and CLIP score run on.

    --clip shapes | kandinsky-2-2 | PRESET.toml | FOLDER   the unCLIP model's own CLIP pair: the prior folder's
                                                           text_encoder, tokenizer, image_encoder, image_processor
                                                           (the prior, U-Net and VAE are not loaded)
    --clip open_clip:ARCH/PRETRAINED                       an open_clip model-zoo entry, from the local cache
    --clip open_clip:ARCH --checkpoint FILE.safetensors    an open_clip architecture with weights from a file
    --clip open_clip:hf-hub:ORG/REPO                       an open_clip model published on the Hugging Face hub

Each backend embeds with the model's own tokenizer and image preprocessing (open_clip's `get_tokenizer` and
preprocess transform, the CLIP image processor of the model folder); the classifier normalises the embeddings.
Logits are cosine similarities times 100: CLIP's learned temperature ends at its clamp of 100 (Radford et al.
2021), and open_clip's zero-shot evaluation multiplies by that constant.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import UserError
from ..pickles import is_pickle
from ..tokens import tokenize

CLIP_LOGIT_SCALE = 100.0
PIPELINE_CLIP_COMPONENTS = ("text_encoder", "tokenizer", "image_encoder", "image_processor")
OPEN_CLIP_PREFIX = "open_clip:"
OPEN_CLIP_SCHEMAS = ("hf-hub:", "local-dir:")  # model names open_clip resolves itself, config and weights together
SCALAR_PARAMETERS = ("logit_scale", "logit_bias")  # stored as shape () or (1,) depending on the model version
EXAMPLES_SHOWN = 3
REASON_CHARACTERS = 200  # of a library's error message, quoted in our one line


class ClipBackend(Protocol):
    name: str  # what the user asked for, as reports print it
    identity: str  # changes with the text tower's weights or tokenizer: the zero-shot cache key ("" = do not cache)
    logit_scale: float

    def encode_text(self, texts: list[str]) -> torch.Tensor:  # (N, D), not necessarily normalised
        ...

    def encode_images(self, images: list) -> torch.Tensor:  # PIL images -> (N, D), not necessarily normalised
        ...

    # Optional, as the two backends below have them: encode_images split in two, so that `run` can preprocess
    # the next batch on its worker thread while the model encodes this one.
    #   preprocess(images) -> pixels;  encode_pixels(pixels) -> (N, D)


class PipelineClip:
    """The CLIP pair an unCLIP model conditions on: `text_embeds` of CLIPTextModelWithProjection and
    `image_embeds` of CLIPVisionModelWithProjection, tokenised and preprocessed as the pipeline does."""

    logit_scale = CLIP_LOGIT_SCALE

    def __init__(self, components: dict, name: str, identity: str):
        self.tokenizer = components["tokenizer"]
        self.text_encoder = components["text_encoder"]
        self.image_encoder = components["image_encoder"]
        self.image_processor = components["image_processor"]
        self.device = self.text_encoder.device
        self.name, self.identity = name, identity

    @classmethod
    def from_pipeline(cls, pipe) -> "PipelineClip":
        """The loaded pipeline's own encoders (with whatever LoRA adapters are active on them)."""
        components = {name: getattr(pipe, name) for name in PIPELINE_CLIP_COMPONENTS}
        # No identity, so never cached: active LoRA adapters change the text encoder, and no file fingerprint shows them.
        return cls(components, name=pipe.model.name, identity="")

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        # Padded to the full length without an attention mask, exactly as UnCLIPPipeline.encode_text feeds the prior.
        tokens = tokenize(self.tokenizer, texts)
        return self.text_encoder(tokens.input_ids.to(self.device)).text_embeds  # (N, D)

    def encode_images(self, images: list) -> torch.Tensor:
        return self.encode_pixels(self.preprocess(images))

    def preprocess(self, images: list) -> torch.Tensor:
        return self.image_processor(images=[image.convert("RGB") for image in images], return_tensors="pt").pixel_values

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(pixels.to(self.device, self.image_encoder.dtype)).image_embeds  # (N, D)


class OpenClip:
    """An open_clip model with its own tokenizer and validation preprocess transform."""

    logit_scale = CLIP_LOGIT_SCALE

    def __init__(self, model, transform, tokenizer, name: str, identity: str):
        self.model, self.transform, self.tokenizer = model, transform, tokenizer  # transform: open_clip's preprocess
        self.device = next(model.parameters()).device
        self._fast = _resize_crop_normalize(transform)
        self.name, self.identity = name, identity

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device))  # (N, D)

    def encode_images(self, images: list) -> torch.Tensor:
        return self.encode_pixels(self.preprocess(images))

    def preprocess(self, images: list) -> torch.Tensor:
        if self._fast and all(image.mode == "RGB" and image.size == (self._fast[0],) * 2 for image in images):
            # Resize and centre crop leave an image already at the model's size untouched, so the batch goes
            # straight to ToTensor + Normalize, as one tensor instead of one image at a time: same numbers, faster.
            _, mean, std = self._fast
            pixels = torch.from_numpy(np.stack([np.asarray(image) for image in images]))  # (N, S, S, 3) uint8
            return pixels.permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)  # (N, 3, S, S)
        return torch.stack([self.transform(image) for image in images])  # (N, 3, S, S)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(self.device))  # (N, D)


def _resize_crop_normalize(transform) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """(S, mean (3, 1, 1), std (3, 1, 1)) when `transform` is open_clip's validation preprocess - Resize(S),
    CenterCrop(S), RGB conversion, ToTensor, Normalize - else None."""
    steps = list(getattr(transform, "transforms", []))
    names = [type(step).__name__ for step in steps]
    if names != ["Resize", "CenterCrop", "MaybeConvertMode", "MaybeToTensor", "Normalize"]:
        return None
    resize, crop, convert, _, normalize = steps
    size = resize.size[0] if isinstance(resize.size, (list, tuple)) and len(resize.size) == 1 else resize.size
    if not isinstance(size, int) or tuple(crop.size) != (size, size) or convert.mode != "RGB":
        return None
    stats = [torch.tensor(values, dtype=torch.float32).view(3, 1, 1) for values in (normalize.mean, normalize.std)]
    return size, *stats


# ---------------------------------------------------------------- choosing and loading a backend
def load_backend(spec: str = "shapes", checkpoint: str | None = None, device: str = "cpu") -> ClipBackend:
    """A backend for `--clip SPEC [--checkpoint FILE]` (see the module docstring for the forms)."""
    check_device(device)
    if spec.startswith(OPEN_CLIP_PREFIX):
        return load_open_clip(spec[len(OPEN_CLIP_PREFIX):], checkpoint, device)
    if checkpoint:
        raise UserError("--checkpoint goes with an open_clip backend (--clip open_clip:ARCH); the pipeline's own "
                        "CLIP pair is read from its model folder")
    return load_pipeline_clip(spec, device)


def unknown_backend(spec: str) -> UserError:
    from ..presets import list_presets

    presets = ", ".join(p.name for p in list_presets()) or "none found"
    return UserError(f"unknown CLIP backend {spec!r}; use a model preset ({presets}), a model folder, "
                     "'open_clip:ARCH/PRETRAINED' (e.g. open_clip:ViT-B-32/laion2b_s34b_b79k), "
                     "'open_clip:hf-hub:ORG/REPO', or 'open_clip:ARCH' with --checkpoint FILE.safetensors")


def check_device(device: str) -> None:
    from ..settings import RuntimeSettings

    RuntimeSettings(device=device).validate()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' asked for, but it is not available; use --device cpu")


def load_pipeline_clip(ref: str, device: str) -> PipelineClip:
    from ..loading import fingerprint, load_components, read_model_index

    folder = pipeline_prior_folder(ref)
    read_model_index(folder, PIPELINE_CLIP_COMPONENTS)
    components = load_components(folder, PIPELINE_CLIP_COMPONENTS, "float32", device)
    identity = f"pipeline:{fingerprint([folder / 'text_encoder'])}:{folder_digest(folder / 'tokenizer')}"
    return PipelineClip(components, name=ref, identity=identity)


def pipeline_prior_folder(ref: str) -> Path:
    """The prior folder (the one holding the CLIP pair) of a preset, a model folder or a prior folder."""
    from ..loading import resolve_folder
    from ..presets import find_preset

    path = Path(ref)
    if (path / "model_index.json").is_file():
        return path
    if (path / "prior" / "model_index.json").is_file():
        return path / "prior"
    if path.exists():
        return resolve_folder(find_preset(ref).prior)  # its own message says what the folder lacks
    try:
        preset = find_preset(ref)
    except UserError:
        raise unknown_backend(ref) from None
    return resolve_folder(preset.prior)


def load_open_clip(spec: str, checkpoint: str | None, device: str) -> OpenClip:
    import open_clip

    if spec.startswith(OPEN_CLIP_SCHEMAS):
        model_name, tag = spec, None
    else:
        model_name, _, tag = spec.partition("/")
        tag = tag or None
    if not model_name:
        raise unknown_backend(OPEN_CLIP_PREFIX + spec)
    if checkpoint and (tag or spec.startswith(OPEN_CLIP_SCHEMAS)):
        raise UserError(f"give either pretrained weights in --clip ({spec!r}) or --checkpoint, not both")
    if not spec.startswith(OPEN_CLIP_SCHEMAS):
        known = open_clip.list_models()
        if model_name not in known:
            raise UserError(f"unknown open_clip architecture {model_name!r}; open_clip knows {len(known)}, e.g. "
                            f"{', '.join(known[:EXAMPLES_SHOWN])} (see open_clip.list_models())")
        if checkpoint:
            check_checkpoint_file(checkpoint)
        elif tag is None:
            raise UserError(f"open_clip:{model_name} needs weights: open_clip:{model_name}/PRETRAINED or "
                            "--checkpoint FILE.safetensors")
        elif tag not in (tags := open_clip.list_pretrained_tags_by_model(model_name)):
            raise UserError(f"open_clip has no pretrained weights {tag!r} for {model_name}; "
                            f"it has: {', '.join(tags) or 'none'}")
    with quiet_logging():
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=tag, device=device)
            tokenizer = open_clip.get_tokenizer(model_name)
        except (RuntimeError, OSError, ValueError) as err:
            hint = "" if spec.startswith("local-dir:") else "; download it once where the hub is reachable"
            raise UserError(f"cannot load open_clip model {spec!r}: {short_reason(err)}{hint}") from None
    if checkpoint:
        load_checkpoint(model, checkpoint, model_name)
        identity = f"open_clip:{model_name}@{file_fingerprint(Path(checkpoint))}"
    else:
        identity = f"open_clip:{spec}"
    return OpenClip(model.eval().requires_grad_(False), preprocess, tokenizer, name=OPEN_CLIP_PREFIX + spec,
                    identity=identity)


def short_reason(err: Exception) -> str:
    """The first line of a library's error, cut at a sentence end when it is long (hub errors nest several)."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if len(line) <= REASON_CHARACTERS:
        return line
    cut = line.rfind(". ", 0, REASON_CHARACTERS)
    return line[:cut] if cut > 0 else line[:REASON_CHARACTERS] + "..."


@contextlib.contextmanager
def quiet_logging():
    """open_clip logs its own warnings and errors ("initialized randomly" before our weights go in, "failed to
    download" before it raises); the user should see our one line instead."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def check_checkpoint_file(path: str) -> None:
    file = Path(path)
    if is_pickle(file):
        raise UserError(f"checkpoint {path!r} is a pickle file, which can run code when loaded; imagegen reads only "
                        ".safetensors (convert it once with safetensors.torch.save_file(torch.load(...), ...))")
    if file.suffix.lower() != ".safetensors":
        raise UserError(f"checkpoint {path!r} is not a .safetensors file")
    if not file.is_file():
        raise UserError(f"checkpoint {path!r} does not exist")


def load_checkpoint(model, path: str, arch: str) -> None:
    """Load a safetensors state dict into an open_clip model, or say in one line how it does not fit."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(path)
    except (OSError, SafetensorError) as err:
        raise UserError(f"cannot read checkpoint {path!r}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if state and all(key.startswith("module.") for key in state):  # saved from DistributedDataParallel
        state = {key[len("module."):]: value for key, value in state.items()}
    expected = model.state_dict()
    for name in SCALAR_PARAMETERS:
        if name in state and name in expected and state[name].numel() == expected[name].numel() == 1:
            state[name] = state[name].reshape(expected[name].shape)
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
                  for key in expected if key in state and state[key].shape != expected[key].shape]
    problems = [f"{len(keys)} {what} (e.g. {', '.join(keys[:EXAMPLES_SHOWN])})"
                for what, keys in (("missing", missing), ("unexpected", unexpected),
                                   ("with another shape (file vs model)", mismatched)) if keys]
    if problems:
        raise UserError(f"checkpoint {path!r} does not fit open_clip architecture {arch!r}: keys "
                        + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def file_fingerprint(path: Path) -> str:
    """A safetensors file's identity, sampled as `imagegen.loading.fingerprint` samples model folders."""
    from ..loading import sample_weights_file

    digest = hashlib.sha256()
    sample_weights_file(path, digest)
    return digest.hexdigest()[:16]


def folder_digest(folder: Path) -> str:
    """Hash of every file in a small folder (a tokenizer's vocabulary and settings)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
