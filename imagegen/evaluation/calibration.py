"""Calibrating the oracle's no-shape threshold (oracle.MIN_IOU) on ground truth.

Ground truth is renders of the shapes world (every shape, filled and outlined, hearts included) under the
degradations a generated image may show: Gaussian blur (the VAE's reconstructions of renders look most like sigma
1 px; 2 px is well beyond them), pixel noise and both; the VAE's reconstructions themselves are shown beside them
but do not bound the threshold (the base VAE is known to break thin outlines). For every condition: how often the oracle reads the true shape without a threshold, and the IoU of the best template among
those correct readings; the threshold is the lowest 1st percentile over the conditions (rounded down to 0.05), so
that >= 99% of the correct readings of every condition's renders stay at or above it - even blurred by 2 px with noise of 12, well
beyond what the VAE does, so that the oracle only calls "no shape" what is clearly less shape-like than that.
Drawings that are no shape of the world (bars, ellipses, two blobs, ragged blobs, smudges) show what it rejects.
benchmarks/oracle_calibration.py prints the table.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..data import shapes
from . import oracle

# name -> (blur sigma px, noise sigma on 0..255)
CONDITIONS = {
    "sharp": (0.0, 0.0),
    "blur 0.5": (0.5, 0.0),
    "blur 1": (1.0, 0.0),
    "blur 1.5": (1.5, 0.0),
    "blur 2": (2.0, 0.0),
    "noise 6": (0.0, 6.0),
    "noise 12": (0.0, 12.0),
    "blur 1 + noise 6": (1.0, 6.0),
    "blur 1.5 + noise 12": (1.5, 12.0),
    "blur 2 + noise 12": (2.0, 12.0),
}
KEEP = 0.99  # the share of correct ground-truth readings the threshold must keep, in every condition
NON_SHAPES = ("bar", "ellipse", "two blobs", "ragged blob", "smudge")


def ground_truth(seed: int, count: int) -> tuple[np.ndarray, list]:
    """`count` renders: half the base world, a sixth hearts, a third outlines of every shape (as tests/test_oracle)."""
    parts = [shapes.generate(seed, count // 2),
             shapes.generate(seed + 1, count // 6, shapes=("heart",)),
             shapes.generate(seed + 2, count - count // 2 - count // 6, shapes=shapes.ALL_SHAPES, style="outline")]
    return np.concatenate([images for images, _, _ in parts]), [a for _, _, attrs in parts for a in attrs]


def degrade(image: np.ndarray, blur: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 (64, 64, 3): Gaussian blur of `blur` px, then Gaussian noise of `noise` (0..255)."""
    out = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(blur)), np.float32) if blur else image
    if noise:
        out = out + rng.normal(0, noise, out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def non_shape(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A drawing in the world's colours that is none of its shapes, softened like a generated image."""
    side, big = shapes.IMAGE_SIZE, shapes.IMAGE_SIZE * 4
    colour, background = rng.choice(len(shapes.COLOUR_NAMES), 2, replace=False)
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = rng.uniform(0.35, 0.65, 2) * big
    r = rng.uniform(0.15, 0.3) * big
    if kind == "bar":
        half = r * rng.uniform(0.15, 0.3)
        draw.rectangle((cx - r * 1.4, cy - half, cx + r * 1.4, cy + half), fill=255)
    elif kind == "ellipse":
        aspect = rng.uniform(2.2, 3.0)
        draw.ellipse((cx - r, cy - r / aspect, cx + r, cy + r / aspect), fill=255)
    elif kind == "two blobs":
        for dx in (-1, 1):
            draw.ellipse((cx + dx * r - r / 2, cy - r / 2, cx + dx * r + r / 2, cy + r / 2), fill=255)
    elif kind == "ragged blob":
        angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
        radii = r * rng.uniform(0.3, 1.0, 9)
        draw.polygon([(cx + q * np.cos(a), cy + q * np.sin(a)) for a, q in zip(angles, radii)], fill=255)
    elif kind == "smudge":
        for _ in range(4):
            x, y = cx + rng.normal(0, r / 2), cy + rng.normal(0, r / 2)
            q = r * rng.uniform(0.2, 0.5)
            draw.ellipse((x - q, y - q * rng.uniform(0.3, 1), x + q, y + q), fill=255)
    else:
        raise ValueError(f"unknown non-shape {kind!r}; expected one of {NON_SHAPES}")
    coverage = np.asarray(mask.reduce(4).filter(ImageFilter.GaussianBlur(1.0)), np.float32)[..., None] / 255
    fg, bg = (np.array(shapes.COLOURS[shapes.COLOUR_NAMES[i]], np.float32) for i in (colour, background))
    return np.rint(bg + coverage * (fg - bg)).astype(np.uint8).reshape(side, side, 3)


def shape_readings(images, attributes) -> tuple[np.ndarray, np.ndarray]:
    """(IoU of the best template, whether it is the true shape) per image, without a threshold."""
    readings = [oracle.read_image(image, min_iou=0.0) for image in images]
    return (np.array([r.iou for r in readings]),
            np.array([r.shape == a.shape for r, a in zip(readings, attributes)]))


def calibration_row(name: str, iou: np.ndarray, correct: np.ndarray, min_iou: float = oracle.MIN_IOU,
                    calibrating: bool = True) -> dict:
    """One condition: shape accuracy without and with the threshold, the highest threshold that keeps KEEP of the
    correct readings (`iou_p1_correct`: the IoU with at most 1% of them below it), their lowest IoU, and the share
    of them `min_iou` keeps. `calibrating`: whether the row bounds the threshold (renders, not reconstructions)."""
    ranked = np.sort(iou[correct])
    return {"condition": name, "images": len(iou), "calibrating": calibrating,
            "shape_any_iou": float(correct.mean()), "shape_with_min_iou": float((correct & (iou >= min_iou)).mean()),
            "iou_p1_correct": float(ranked[int((1 - KEEP) * len(ranked))]) if len(ranked) else 0.0,
            "iou_min_correct": float(ranked[0]) if len(ranked) else 0.0,
            "kept": float((ranked >= min_iou).mean()) if len(ranked) else 1.0}


def threshold(rows: list[dict], step: float = 0.05) -> float:
    """The largest multiple of `step` that keeps KEEP of the correct readings in every calibrating row."""
    lowest = min(row["iou_p1_correct"] for row in rows if row["calibrating"])
    return float(np.floor(round(lowest / step, 6)) * step)
