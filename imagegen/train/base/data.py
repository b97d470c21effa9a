"""Streamed training data: batches of the procedural shapes world as torch tensors, plus the shared conversions.

Batch k of a stage is generated from the seed pair (stage seed, k) and nothing else, so there is no data-loader state
to checkpoint: a resumed run simply asks for batch k again. Held-out sets come from `data.heldout_seed`, which no
training stream uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...data import shapes
from ...errors import UserError
from ...tokens import tokenize as tokens_of

# The classes of each attribute the CLIP heads predict and the zero-shot evaluation asks about (the base model's
# world: no heart, no outline).
ATTRIBUTE_CLASSES = {
    "shape": shapes.SHAPES,
    "colour": shapes.COLOUR_NAMES,
    "background": shapes.COLOUR_NAMES,
    "size": shapes.SIZES,
    "position": shapes.POSITIONS,
}


@dataclass
class ShapesBatch:
    images: np.ndarray  # (B, 64, 64, 3) uint8
    captions: list[str]
    attributes: list[shapes.ShapeAttributes]

    def pixels(self) -> torch.Tensor:
        """The VAE's input: (B, 3, 64, 64) float in [-1, 1]."""
        return torch.from_numpy(self.images).permute(0, 3, 1, 2).float() / 127.5 - 1

    @classmethod
    def concat(cls, parts: list[ShapesBatch]) -> ShapesBatch:
        return cls(np.concatenate([p.images for p in parts]), [c for p in parts for c in p.captions],
                   [a for p in parts for a in p.attributes])

    def labels(self) -> dict[str, torch.Tensor]:
        """Class index of every attribute, each (B,) long."""
        return {name: torch.tensor([classes.index(getattr(a, name)) for a in self.attributes])
                for name, classes in ATTRIBUTE_CLASSES.items()}


def step_rng(stage_seed: int, step: int, purpose: int = 0) -> np.random.Generator:
    """A random generator for batch `step` of a stream, independent of every other (seed, step, purpose);
    purpose 0 draws the images, others whatever else a stage decides per batch."""
    return np.random.default_rng([stage_seed, step, purpose])


def training_batch(stage_seed: int, step: int, batch_size: int, fixed: dict | None = None,
                   p_keep: dict | None = None) -> ShapesBatch:
    """Batch `step` of the stream `stage_seed`; `fixed` forces attributes (shapes.sample_attributes), `p_keep` sets
    how often captions state each optional attribute (shapes.caption)."""
    seed = int(step_rng(stage_seed, step).integers(2**63))
    images, captions, attributes = shapes.generate(seed, batch_size, fixed=fixed, p_keep=p_keep)
    return ShapesBatch(images, captions, attributes)


def focus_attributes(focus) -> dict[str, str]:
    """The attributes a focus cell (config.FocusExamples) forces, checked against the world's: a one-line UserError
    naming the bad value and the accepted ones."""
    for name, value, accepted in (("shape", focus.shape, shapes.SHAPES), ("size", focus.size, shapes.SIZES)):
        if value and value not in accepted:
            raise UserError(f"vae.focus.{name} {value!r} is not one of {', '.join(accepted)} (or \"\" for any)")
    return {name: value for name, value in (("shape", focus.shape), ("size", focus.size)) if value}


def heldout_batch(seed: int, count: int) -> ShapesBatch:
    return ShapesBatch(*shapes.generate(seed, count))


def clip_pixels(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 (B, 64, 64, 3) -> the image encoder's input (B, 3, 64, 64), exactly as the saved CLIPImageProcessor
    makes it (its resize and crop are identities at 64x64; then x / 255, minus mean, over std)."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (B, 3, 64, 64) in [0, 1]
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def tokenize(tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, T) and attention mask (B, T) bool, padded to the tokenizer's length as the pipeline does."""
    tokens = tokens_of(tokenizer, captions)
    return tokens.input_ids, tokens.attention_mask.bool()
