"""A pixel oracle for the shapes world: reads back which shape, colours, size, position and style an image
shows, so that generated images can be scored against their prompts without CLIP.

It inverts the generator in ``imagegen.data.shapes`` step by step, using the generator's own constants and
templates, so the two cannot drift apart:

1. background: the median of the border ring (the generator always keeps a margin of pure background
   there), mapped to the nearest palette colour;
2. shape colour: the mean of the pixels most unlike the background, and the palette colour (other than the
   background's) whose mixtures with the background best explain the shape's pixels - a thin blurred
   line never reaches its own colour, so plain nearest-colour would misread it;
3. coverage: each pixel's position on the segment background -> shape colour. Blur and anti-aliasing only
   mix the two colours, so this is robust to both; the inside of an outline (background enclosed by the
   shape) is filled in to give the silhouette;
4. shape: for each candidate shape, the silhouette's area and centroid say which radius and centre that
   shape would need; its template is rendered by ``shapes.render_mask`` and compared by IoU; best wins, unless
   even the best fits worse than ``MIN_IOU``: then the drawing is no shape of the world (a smudge, a blob) and
   the oracle reads "no shape" (shape and style None; colour, size and position are still read from the blob);
5. size and position: from the winning fit's radius and centre, with boundaries halfway between the
   ranges the generator can produce (see ``SIZE_BOUNDARIES`` and ``CELL_BOUNDARY``);
6. style: outlined if the fitted shape's inside (its hole, were it outlined) shows mostly background.

Any image size is accepted (it is resized to 64x64 first).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageFilter

from imagegen.data import shapes

SIDE = shapes.IMAGE_SIZE
BORDER_PX = 2  # the ring read for the background; the generator keeps EDGE_MARGIN_PX of background there
CORE_PIXELS = 16  # the shape colour is read from (about) the 16 pixels most unlike the background
CORE_FRACTION = 0.8  # ... and any pixel at least this far, relative to the 16th
MIXED_FRACTION = 0.5  # pixels at least half as distinct as the core ones show the mixing direction
SHORTFALL_WEIGHT = 0.25  # see _shape_colour
MIN_CONTRAST = 30.0  # RGB distance below which nothing is considered drawn
ENCLOSING_COVERAGE = 0.25  # background counts as enclosed by an outline that stays above this coverage
# Generated images are soft, and blur turns the sharp template's IoU against a small star's silhouette into
# a disc's; so each template is also compared blurred by these Gaussian sigmas (px at 64x64).
TEMPLATE_BLURS_PX = (0.0, 1.0, 1.6)
# Inside an outlined shape the coverage is ~0 sharp and up to ~0.7 blurred by 1 px (a small cross's inside is
# 2 px wide); inside a filled one it stays ~1.
OUTLINE_HOLE_COVERAGE = 0.85
HOLE_DEPTH = 0.75  # pixels at least this deep in the template's hole are the ones inspected
OUTER_EDGE_PX = 2  # how deep the outer, partially covered edge of a blurred silhouette reaches
NEAR_SHAPE_PX = 3  # coverage is summed this far around the shape: blur spreads it, noise elsewhere is ignored
# The best template's IoU below which the drawing counts as no shape at all. Calibrated on ground truth by
# benchmarks/oracle_calibration.py: 600 renders of every shape, filled and outlined, sharp, blurred up to sigma 2 px
# (the VAE's reconstructions look like sigma 1) and with noise up to 12 of 255; the largest multiple of 0.05 that
# keeps >= 99% of the correct readings of every condition (the lowest 1st percentile, 0.74, is blur 2 + noise 12;
# a VAE-like blur 1 + noise 6 keeps all, with its 1st percentile at 0.90). Smudges, bars and two blobs fall below.
MIN_IOU = 0.70

_RADIUS_JITTER = (1 - shapes.SIZE_JITTER, 1 + shapes.SIZE_JITTER)
SIZE_BOUNDARIES = tuple(
    (shapes.SIZE_RADII[smaller] * _RADIUS_JITTER[1] + shapes.SIZE_RADII[larger] * _RADIUS_JITTER[0]) / 2
    for smaller, larger in zip(shapes.SIZES, shapes.SIZES[1:])
)
# A large shape in the left column is pushed right by the edge clamp, up to the largest radius + margin;
# the boundary lies halfway between that and the leftmost centre of the middle column.
_LEFT_COLUMN_MAX = max(
    shapes.GRID_CENTRES[0] + shapes.POSITION_JITTER,
    max(shapes.SIZE_RADII.values()) * _RADIUS_JITTER[1] + shapes.EDGE_MARGIN_PX / SIDE,
)
CELL_BOUNDARY = (_LEFT_COLUMN_MAX + shapes.GRID_CENTRES[1] - shapes.POSITION_JITTER) / 2  # and 1 - it

ATTRIBUTES = shapes.ATTRIBUTE_NAMES
_PALETTE = np.array([shapes.COLOURS[name] for name in shapes.COLOUR_NAMES], dtype=np.float32)


@dataclass(frozen=True)
class OracleReading:
    """What the oracle sees. Attribute values use the vocabularies of ``imagegen.data.shapes``; they are
    None (except ``background``) when nothing stands out from the background, and ``shape`` and ``style`` are
    None when what stands out fits no template well enough (IoU below ``MIN_IOU``): "no shape"."""

    shape: str | None
    colour: str | None
    background: str
    size: str | None
    position: str | None
    style: str | None
    iou: float  # IoU of the silhouette with the best template: how shape-like the drawing is
    r: float  # the fitted size radius and centre, fractions of the side
    cx: float
    cy: float

    def labels(self) -> dict[str, str | None]:
        return {name: getattr(self, name) for name in ATTRIBUTES}


def read_image(img: np.ndarray | Image.Image, min_iou: float = MIN_IOU) -> OracleReading:
    """Read the attributes an image shows. ``img``: a PIL image, or an (H, W, 3) array (uint8, or float in
    [0, 1]) of any size. ``min_iou``: the fit below which the oracle reads no shape (0: always the best-fitting
    template, as the oracle did before it had a threshold)."""
    pixels = _as_pixels(img)
    background_rgb = np.median(pixels[_border_ring()], axis=0)
    background = _nearest_colour(background_rgb)

    contrast = np.linalg.norm(pixels - background_rgb, axis=-1)
    reference = np.partition(contrast.ravel(), -CORE_PIXELS)[-CORE_PIXELS]
    if reference < MIN_CONTRAST:
        return OracleReading(None, None, background, None, None, None, 0.0, 0.0, 0.5, 0.5)
    shape_rgb = pixels[contrast >= CORE_FRACTION * reference].mean(axis=0)
    colour = _shape_colour(pixels[contrast >= MIXED_FRACTION * reference], shape_rgb, background_rgb, background)

    # Coverage is left unclipped: zero-mean noise then cancels in the sums below instead of adding up.
    direction = shape_rgb - background_rgb
    coverage = (pixels - background_rgb) @ direction / (direction @ direction)
    uncovered = _box_blur(coverage) < ENCLOSING_COVERAGE
    outside = _reachable_from_border(uncovered)
    silhouette = coverage
    if (uncovered & ~outside).any():  # background enclosed by the shape: an outline; fill it in
        # Only the outer edge keeps its partial coverage; the line's inner edge belongs to the silhouette.
        silhouette = np.where(_dilate(outside, OUTER_EDGE_PX), coverage, 1.0)
    near_shape = _dilate(~outside, NEAR_SHAPE_PX)
    weights = np.where(near_shape, silhouette, 0.0)
    area = max(weights.sum(), 1.0) / SIDE**2
    y, x = (np.indices((SIDE, SIDE)) + 0.5) / SIDE
    centroid = np.array([(weights * x).sum(), (weights * y).sum()]) / (area * SIDE**2)

    # Holes are filled in: every template is simply connected, and a blurred outline's inside can sit just below
    # half coverage without the enclosure being seen (a small outlined cross, blurred by 1 px).
    filled = silhouette > 0.5
    filled |= ~_reachable_from_border(~filled)
    iou, shape, r, cx, cy = max(_fit(candidate, area, centroid, filled) for candidate in shapes.ALL_SHAPES)
    style = _style(shape, r, cx, cy, coverage)
    size = shapes.SIZES[int(np.searchsorted(SIZE_BOUNDARIES, r))]
    position = shapes.POSITIONS[3 * _cell(cy) + _cell(cx)]
    return with_min_iou(OracleReading(shape, colour, background, size, position, style, float(iou), r, cx, cy), min_iou)


def with_min_iou(reading: OracleReading, min_iou: float = MIN_IOU) -> OracleReading:
    """The reading with the IoU threshold applied: no shape (and so no style) below ``min_iou``."""
    return reading if reading.iou >= min_iou else replace(reading, shape=None, style=None)


def score(reading: OracleReading, wanted: dict[str, str]) -> dict[str, bool]:
    """Which of the attributes a prompt states (e.g. ``shapes.parse_prompt(prompt)``) the image shows,
    plus ``all``: whether it shows every one of them."""
    unknown = set(wanted) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; expected some of {ATTRIBUTES}")
    checks = {name: getattr(reading, name) == value for name, value in wanted.items() if value is not None}
    checks["all"] = all(checks.values())
    return checks


# --- Steps ----------------------------------------------------------------------------------------------


def _as_pixels(img: np.ndarray | Image.Image) -> np.ndarray:
    """float32 (64, 64, 3) RGB on 0..255."""
    if isinstance(img, np.ndarray):
        array = img.astype(np.float32) * (255 if img.dtype.kind == "f" and img.max() <= 1.0 else 1)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        img = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8)[..., :3])
    img = img.convert("RGB")
    if img.size != (SIDE, SIDE):
        # Box filtering averages whole pixels when shrinking; bicubic is the better choice when enlarging.
        shrinking = min(img.size) >= SIDE
        img = img.resize((SIDE, SIDE), Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


@functools.cache
def _border_ring() -> np.ndarray:
    ring = np.ones((SIDE, SIDE), dtype=bool)
    ring[BORDER_PX:-BORDER_PX, BORDER_PX:-BORDER_PX] = False
    return ring


def _nearest_colour(rgb: np.ndarray, excluding: str | None = None) -> str:
    distances = np.linalg.norm(_PALETTE - rgb, axis=1)
    if excluding is not None:
        distances[shapes.COLOUR_NAMES.index(excluding)] = np.inf
    return shapes.COLOUR_NAMES[int(distances.argmin())]


def _shape_colour(mixed: np.ndarray, shape_rgb: np.ndarray, background_rgb: np.ndarray, background: str) -> str:
    """The palette colour c that best explains the shape's pixels as mixtures background -> c.

    The strongest pixels alone can mislead: a thin blurred line never reaches its own colour, and half
    black on white is a grey nearer green than black. A mixture lies on the segment from the background
    to the true colour, so each candidate is scored by the pixels' distance to its segment plus, weighted
    by SHORTFALL_WEIGHT, how far the strongest pixels stop short of it (orange on red also lies on the
    red -> yellow segment, but no part of it is yellow)."""
    best_name, best_score = "", np.inf
    for name, rgb in zip(shapes.COLOUR_NAMES, _PALETTE):
        if name == background:  # the world never paints a shape in its background's colour
            continue
        segment = rgb - background_rgb
        length_squared = segment @ segment
        along = np.clip((mixed - background_rgb) @ segment / length_squared, 0, 1)
        residual = np.linalg.norm(mixed - background_rgb - along[:, None] * segment, axis=1).mean()
        reached = np.clip((shape_rgb - background_rgb) @ segment / length_squared, 0, 1)
        score = residual + SHORTFALL_WEIGHT * (1 - reached) * np.sqrt(length_squared)
        if score < best_score:
            best_name, best_score = name, score
    return best_name


def _box_blur(values: np.ndarray) -> np.ndarray:
    """3x3 mean (edges repeated): enough to keep single noisy pixels from opening or closing an outline."""
    padded = np.pad(values, 1, mode="edge")
    return sum(padded[dy : dy + SIDE, dx : dx + SIDE] for dy in range(3) for dx in range(3)) / 9


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    grown = mask.copy()
    for _ in range(steps):
        previous = grown.copy()
        grown[1:] |= previous[:-1]
        grown[:-1] |= previous[1:]
        grown[:, 1:] |= previous[:, :-1]
        grown[:, :-1] |= previous[:, 1:]
    return grown


def _reachable_from_border(passable: np.ndarray) -> np.ndarray:
    """Flood fill (4-connected) of ``passable`` pixels from the image border."""
    reached = passable & _border_ring()
    while True:
        grown = _dilate(reached, 1) & passable
        if np.array_equal(grown, reached):
            return reached
        reached = grown


@functools.cache
def _unit_geometry(shape: str) -> tuple[float, np.ndarray]:
    """Area and centroid of the shape with r = 1 around (0, 0)."""
    points = shapes.shape_polygon(shape, 1.0, 0.0, 0.0)
    x, y = points[:, 0], points[:, 1]
    x_next, y_next = np.roll(x, -1), np.roll(y, -1)
    cross = x * y_next - x_next * y
    signed_area = cross.sum() / 2
    centroid = np.array([((x + x_next) * cross).sum(), ((y + y_next) * cross).sum()]) / (6 * signed_area)
    return abs(signed_area), centroid


def _fit(shape: str, area: float, centroid: np.ndarray, filled: np.ndarray) -> tuple[float, str, float, float, float]:
    """(IoU, shape, r, cx, cy): ``shape`` placed to have the silhouette's area and centroid, and the best
    IoU of its template, sharp or blurred, with the silhouette."""
    unit_area, unit_centroid = _unit_geometry(shape)
    r = float(np.clip(np.sqrt(area / unit_area), 1 / SIDE, 0.5))
    cx, cy = (float(c) for c in centroid - unit_centroid * r)
    sharp = shapes.render_mask(shape, r, cx, cy)
    best_iou = 0.0
    for blur in TEMPLATE_BLURS_PX:
        template = _blurred(sharp, blur) > 0.5
        union = (template | filled).sum()
        best_iou = max(best_iou, float((template & filled).sum() / union) if union else 0.0)
    return best_iou, shape, r, cx, cy


def _style(shape: str, r: float, cx: float, cy: float, coverage: np.ndarray) -> str:
    """Outlined if the fitted shape's inside - where its outlined version shows background - is mostly
    background here too."""
    hole = shapes.render_mask(shape, r, cx, cy) - shapes.render_mask(shape, r, cx, cy, "outline")
    if hole.max() <= 0.5:  # too small to have an inside: it can only be drawn filled
        return "filled"
    inside = hole >= min(HOLE_DEPTH, hole.max())
    return "outline" if coverage[inside].mean() < OUTLINE_HOLE_COVERAGE else "filled"


def _blurred(mask: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0:
        return mask
    image = Image.fromarray(np.rint(mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(sigma))
    return np.asarray(image, dtype=np.float32) / 255


def _cell(centre: float) -> int:
    """0, 1 or 2: the grid row or column of a centre coordinate."""
    return 0 if centre < CELL_BOUNDARY else 2 if centre > 1 - CELL_BOUNDARY else 1
