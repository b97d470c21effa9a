"""Training data of a LoRA run: a folder of captioned images, checked, cropped and encoded once.

Two layouts are read (`read_dataset`):
- kohya: `name.png` with its caption in `name.txt` beside it, in the folder or its subfolders;
- Hugging Face imagefolder: a `metadata.jsonl` whose lines hold `file_name` (relative to the folder) and `text`
  (when it is there, it is what is read).
Every problem (no images, captions missing, images that do not decode) is found before any model loads and reported as
one line naming the files.

`encode_dataset` resizes and centre-crops each image to the model's resolution and computes, once, everything the
training steps need: VAE latents (x scaling_factor for an AutoencoderKL; MoVQ latents unscaled, as Kandinsky 2.2),
CLIP image embeddings, and the CLIP text embeddings of the captions - or only their tokens when the text encoder is
itself trained and must encode them live. `EpochOrder` is the order examples are drawn in: a permutation per epoch
that depends on (seed, epoch) alone, so a resumed run sees the very batches an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import VQModel
from PIL import Image, UnidentifiedImageError

from ...errors import UserError
from ...tokens import tokenize

log = logging.getLogger("imagegen.train")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA_FILE = "metadata.jsonl"
SHOWN_NAMES = 3
ENCODE_BATCH = 16


@dataclass(frozen=True)
class Example:
    path: Path
    caption: str


def read_dataset(folder: str | Path, skip_bad: bool = False) -> list[Example]:
    """The (image, caption) pairs of a folder, sorted by path; a one-line UserError for every kind of bad input."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"training data folder {str(root)!r} does not exist or is not a folder")
    metadata = root / METADATA_FILE
    examples = _from_metadata(root, metadata) if metadata.is_file() else _from_caption_files(root)
    if not examples:
        raise UserError(f"no images in {str(root)!r}: expected {', '.join(IMAGE_SUFFIXES)} files with same-name .txt "
                        f"captions, or a {METADATA_FILE} with file_name and text")
    bad = [e.path for e in examples if not _decodes(e.path)]
    if bad and not skip_bad:
        raise UserError(f"{len(bad)} unreadable image(s) in {str(root)!r}: {_names(bad, root)}; fix or remove them, "
                        "or pass --skip-bad to train without them")
    if bad:
        if int(os.environ.get("RANK", "0")) == 0:
            log.warning("skipping %d unreadable image(s): %s", len(bad), _names(bad, root))
        examples = [e for e in examples if e.path not in set(bad)]
        if not examples:
            raise UserError(f"no readable images in {str(root)!r} ({len(bad)} unreadable ones skipped)")
    return examples


def _from_caption_files(root: Path) -> list[Example]:
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(root).parts))
    examples, uncaptioned = [], []
    for path in images:
        text_file = path.with_suffix(".txt")
        caption = _clean(text_file.read_text(encoding="utf-8", errors="replace")) if text_file.is_file() else ""
        if caption:
            examples.append(Example(path, caption))
        else:
            uncaptioned.append(path)
    if uncaptioned:
        raise UserError(f"{len(uncaptioned)} image(s) in {str(root)!r} have no caption (a same-name .txt file, not "
                        f"empty): {_names(uncaptioned, root)}")
    return examples


def _from_metadata(root: Path, metadata: Path) -> list[Example]:
    examples, uncaptioned, missing = [], [], []
    for number, line in enumerate(metadata.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        name = record.get("file_name") if isinstance(record, dict) else None
        if not isinstance(name, str) or not name:
            raise UserError(f"{str(metadata)!r} line {number} is not a JSON object with a 'file_name'")
        path = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise UserError(f"{str(metadata)!r} line {number}: file_name {name!r} must be a path inside the folder")
        caption = _clean(record.get("text")) if isinstance(record.get("text"), str) else ""
        if not path.is_file():
            missing.append(path)
        elif not caption:
            uncaptioned.append(path)
        else:
            examples.append(Example(path, caption))
    if missing:
        raise UserError(f"{len(missing)} image(s) listed in {str(metadata)!r} do not exist: {_names(missing, root)}")
    if uncaptioned:
        raise UserError(f"{len(uncaptioned)} image(s) in {str(metadata)!r} have no caption (a non-empty 'text'): "
                        f"{_names(uncaptioned, root)}")
    return sorted(examples, key=lambda e: str(e.path))


def _clean(text: str) -> str:
    return " ".join(text.split())


def _names(paths: list[Path], root: Path) -> str:
    shown = ", ".join(str(p.relative_to(root)) for p in paths[:SHOWN_NAMES])
    return shown + (f" and {len(paths) - SHOWN_NAMES} more" if len(paths) > SHOWN_NAMES else "")


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return False


def fingerprint(examples: list[Example]) -> str:
    """Which files with which captions: a resumed run must train on the same data."""
    digest = hashlib.sha256()
    for e in examples:
        digest.update(f"{e.path.name}\0{e.caption}\0{e.path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize so the image covers width x height, then cut out the centre; an image of that size is left as it is."""
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


def vae_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 3, H, W) in [-1, 1] -> the latents the U-Net denoises (what the pipeline's decode undoes)."""
    if isinstance(vae, VQModel):
        return vae.encode(pixels).latents  # MoVQ: unquantised, unscaled (decoded with force_not_quantize)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (vae.encode(pixels).latent_dist.mean - shift) * vae.config.scaling_factor


@torch.no_grad()
def encode_dataset(pipe, examples: list[Example], width: int, height: int, tokens_only: bool,
                   keep_pixels: bool = False):
    """(per-example tensors, the unconditional text inputs (1, ...)) for the training steps; with `keep_pixels`, the
    images too (in [-1, 1]), for the VAE's reconstruction loss."""
    device = pipe.device
    latents, image_embeds, kept = [], [], []
    for start in range(0, len(examples), ENCODE_BATCH):
        images = []
        for example in examples[start:start + ENCODE_BATCH]:
            with Image.open(example.path) as image:
                images.append(fit(image, width, height))
        pixels = torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2)  # (b, 3, H, W)
        pixels = pixels.to(device=device, dtype=pipe.vae.dtype) / 127.5 - 1
        latents.append(vae_latents(pipe.vae, pixels).float())  # (b, C, H/f, W/f)
        if keep_pixels:
            kept.append(pixels.float())  # (b, 3, H, W)
        clip_pixels = pipe.image_processor(images=images, return_tensors="pt").pixel_values
        clip_pixels = clip_pixels.to(device=device, dtype=pipe.image_encoder.dtype)
        image_embeds.append(pipe.image_encoder(clip_pixels).image_embeds.float())  # (b, D)
    data = {"latents": torch.cat(latents), "image_embeds": torch.cat(image_embeds)}
    if keep_pixels:
        data["pixels"] = torch.cat(kept)
    captions = [e.caption for e in examples]
    if tokens_only:
        data.update(caption_tokens(pipe.tokenizer, captions, device))
        return data, caption_tokens(pipe.tokenizer, [""], device)
    parts = [pipe.encode_text(captions[i:i + ENCODE_BATCH]) for i in range(0, len(captions), ENCODE_BATCH)]
    data.update(text_embeds=torch.cat([p[0] for p in parts]).float(),  # (N, D)
                token_states=torch.cat([p[1] for p in parts]).float(),  # (N, T, W)
                attention_mask=torch.cat([p[2] for p in parts]))  # (N, T) bool
    embeds, states, mask = pipe.encode_text([""])
    return data, {"text_embeds": embeds.float(), "token_states": states.float(), "attention_mask": mask}


def caption_tokens(tokenizer, captions: list[str], device) -> dict:
    """input_ids (N, T) and attention_mask (N, T) bool, padded to the tokenizer's length as the pipeline does."""
    tokens = tokenize(tokenizer, captions)
    return {"input_ids": tokens.input_ids.to(device), "attention_mask": tokens.attention_mask.bool().to(device)}


class CachedExamples(torch.utils.data.Dataset):
    """Row i of every cached tensor; the default collate stacks them into a batch."""

    def __init__(self, tensors: dict):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors["latents"])

    def __getitem__(self, index: int) -> dict:
        return {key: value[index] for key, value in self.tensors.items()}


class EpochOrder(torch.utils.data.Sampler):
    """`total` example indices: epoch after epoch, each a permutation drawn from (seed, epoch) alone."""

    def __init__(self, count: int, seed: int, total: int):
        self.count, self.seed, self.total = count, seed, total

    def __len__(self):
        return self.total

    def __iter__(self):
        emitted, epoch = 0, 0
        while emitted < self.total:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            for index in torch.randperm(self.count, generator=generator)[: self.total - emitted].tolist():
                yield index
            emitted, epoch = min(self.total, emitted + self.count), epoch + 1
