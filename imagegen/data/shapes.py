"""The procedural "shapes" world: a seeded generator of tiny captioned images.

Every image is 64x64 RGB with exactly one shape on a plain background. The attributes (shape, colour,
background, size, position, style) are drawn independently from small vocabularies, rendered with
anti-aliasing and described by a tiny English grammar:

    a [size] [colour] [outlined] <shape> [position] [on a <colour> background]

The vocabularies are in ``imagegen.data.attributes``, the grammar (both ways) in ``imagegen.data.captions``; this
module draws, renders and writes the images, and names everything of the other two as well.

Design:
* One ``numpy.random.Generator`` (PCG64) is consumed in a fixed order - attributes, then colour jitter,
  then caption - so a seed fully determines the data, and ``batches`` is simply ``generate`` continued.
* Geometry is defined once, as polygons in units of the size radius r (``shape_polygon``); the renderer,
  the tests and the evaluation oracle (``imagegen.evaluation.oracle``) all use it, so they cannot disagree.
* Rendering draws one coverage mask at 4x resolution with PIL, box-filters it down and blends the two
  colours through it: anti-aliased and fast (several thousand images per second on one core).
* ``heart`` and the ``outline`` style are held-out concepts: they only appear when explicitly requested.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

# The vocabularies and the grammar live in their own modules; shapes.X names them all, as it always did.
from .attributes import (  # noqa: F401
    ALL_SHAPES, ATTRIBUTE_NAMES, COLOUR_NAMES, COLOURS, POSITIONS, SHAPES, SIZE_RADII, SIZES, STYLES, VOCABULARY,
    ShapeAttributes, check_labels,
)  # fmt: skip
from .captions import (  # noqa: F401
    CAPTION_KEEP_PROBABILITY, PARAPHRASE_PROBABILITY, PARAPHRASES, caption, caption_from, full_caption, parse_prompt,
)  # fmt: skip

# --- Spec constants (lengths are fractions of the image side unless marked _PX) ---------------------------

IMAGE_SIZE = 64
SUPERSAMPLING = 4  # the mask is drawn at 4x and box-filtered down: that is the anti-aliasing
# PIL fills polygons inclusively: every edge lands 0.25-0.5 (on average 0.35) drawing pixels too far out.
PIL_FILL_OVERREACH = 0.35

SQUARE_HALF_SIDE = 0.85  # x r
STAR_POINTS = 5
STAR_INNER_RADIUS = 0.45  # x r
CROSS_HALF_THICKNESS = 0.33  # x r
CIRCLE_VERTICES = 96  # a 96-gon has 99.93% of the disc's area
HEART_VERTICES = 72

COLOUR_JITTER = 12  # uniform, per channel, on 0..255
SIZE_JITTER = 0.10  # relative, uniform

GRID_CENTRES = (0.28, 0.5, 0.72)  # row 0 is the top
POSITION_JITTER = 0.04
EDGE_MARGIN_PX = 2  # pure background kept around every shape, so the border always shows the background

OUTLINE_WIDTH_PX = 3.0
# A 3-px line would fill a small star or cross completely; the line is thinned to at most this fraction
# of the shape's inscribed radius so that an outlined shape always shows background inside.
OUTLINE_MAX_INRADIUS_FRACTION = 0.5

# --- Geometry -------------------------------------------------------------------------------------------


@functools.cache
def _unit_polygon(shape: str) -> np.ndarray:
    """Outline of ``shape`` centred at 0 with size radius 1, as read-only (k, 2) x/y with y pointing down."""
    points = _build_unit_polygon(shape)
    points.setflags(write=False)  # it is cached: nobody may change it
    return points


def _build_unit_polygon(shape: str) -> np.ndarray:
    if shape == "circle":
        angles = np.linspace(0, 2 * np.pi, CIRCLE_VERTICES, endpoint=False)
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "square":
        h = SQUARE_HALF_SIDE
        return np.array([(-h, -h), (h, -h), (h, h), (-h, h)], dtype=float)
    if shape == "triangle":  # circumradius 1, first vertex straight up
        angles = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "star":
        angles = -np.pi / 2 + np.arange(2 * STAR_POINTS) * np.pi / STAR_POINTS
        radii = np.where(np.arange(2 * STAR_POINTS) % 2 == 0, 1.0, STAR_INNER_RADIUS)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    if shape == "cross":
        t = CROSS_HALF_THICKNESS
        top_arm_and_corner = np.array([(-t, -1), (t, -1), (t, -t)])
        quarter_turn = np.array([[0, -1], [1, 0]])  # (x, y) -> (-y, x): top arm -> right arm
        return np.concatenate([top_arm_and_corner @ np.linalg.matrix_power(quarter_turn, k).T for k in range(4)])
    if shape == "heart":  # the classic curve x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t
        t = np.linspace(0, 2 * np.pi, HEART_VERTICES, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # point down
        points = np.stack([x, y], axis=1)
        points -= (points.min(axis=0) + points.max(axis=0)) / 2  # centre = middle of the bounding box
        return points / np.linalg.norm(points, axis=1).max()  # fits in radius 1
    raise ValueError(f"unknown shape {shape!r}; expected one of {ALL_SHAPES}")


def shape_polygon(shape: str, r: float, cx: float, cy: float) -> np.ndarray:
    """Vertices of the shape as (k, 2) x/y in fractions of the side (y down). Every vertex is within r
    of the centre along each axis, which is what the position clamp relies on."""
    return _unit_polygon(shape) * r + (cx, cy)


def _signed_area(points: np.ndarray) -> float:
    """Shoelace formula; the sign tells the direction the vertices go round."""
    x, y = points[:, 0], points[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2


def polygon_area(points: np.ndarray) -> float:
    """Area enclosed by a simple polygon."""
    return abs(_signed_area(points))


@functools.cache
def unit_inradius(shape: str) -> float:
    """Radius of the largest circle that fits in the shape, in units of r (numerically, to ~1%)."""
    grid_size = 101
    mask = Image.new("L", (grid_size, grid_size), 0)
    to_grid = (_unit_polygon(shape) + 1) * (grid_size - 1) / 2
    ImageDraw.Draw(mask).polygon(to_grid.ravel().tolist(), fill=1)
    inside = np.argwhere(np.asarray(mask) > 0)[:, ::-1] * 2 / (grid_size - 1) - 1
    start = _unit_polygon(shape)
    edge = np.roll(start, -1, axis=0) - start
    offset = inside[:, None, :] - start[None]
    along = np.clip((offset * edge).sum(-1) / (edge * edge).sum(-1), 0, 1)
    distance = np.linalg.norm(offset - along[..., None] * edge, axis=-1).min(axis=1)
    return float(distance.max())


def outline_width(shape: str, r: float) -> float:
    """Line width of the outline style, as a fraction of the side (3 px unless the shape is too thin)."""
    return min(OUTLINE_WIDTH_PX / IMAGE_SIZE, OUTLINE_MAX_INRADIUS_FRACTION * unit_inradius(shape) * r)


@functools.cache
def _reflex_corners(shape: str) -> np.ndarray:
    """Which vertices turn away from the inside (the star's inner corners, the heart's dip)."""
    points = _unit_polygon(shape)
    incoming, outgoing = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
    turn = incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]
    return turn * _signed_area(points) < 0


def _inward_normals(points: np.ndarray) -> np.ndarray:
    """Unit normal of each edge (from vertex i to i + 1), pointing into the polygon."""
    edge = np.roll(points, -1, axis=0) - points
    edge /= np.linalg.norm(edge, axis=1, keepdims=True)
    return np.sign(_signed_area(points)) * np.stack([-edge[:, 1], edge[:, 0]], axis=1)


def _inset(points: np.ndarray, distance: float) -> np.ndarray:
    """Polygon with every edge moved ``distance`` inwards (mitred corners; only for small distances)."""
    after = _inward_normals(points)
    before = np.roll(after, 1, axis=0)  # normals of the two edges meeting at each vertex
    return points + distance * (before + after) / (1 + (before * after).sum(1, keepdims=True))


def render_mask(shape: str, r: float, cx: float, cy: float, style: str = "filled",
                side: int = IMAGE_SIZE) -> np.ndarray:  # fmt: skip
    """Anti-aliased coverage of the shape: float32 (side, side) in [0, 1]."""
    big = side * SUPERSAMPLING
    boundary = shape_polygon(shape, r, cx, cy) * big
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).polygon(_inset(boundary, PIL_FILL_OVERREACH).ravel().tolist(), fill=255)
    if style == "outline":
        # The outline is the part of the shape within the line width of its boundary: a band inside every
        # edge plus a disc on every inner corner, clipped to the shape. (PIL's own wide lines come out
        # too thin on short segments.)
        reach = outline_width(shape, r) * big - PIL_FILL_OVERREACH
        stroke = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(stroke)
        for start, end, inward in zip(boundary, np.roll(boundary, -1, axis=0), _inward_normals(boundary) * reach):
            draw.polygon([*start, *end, *(end + inward), *(start + inward)], fill=255)
        for x, y in boundary[_reflex_corners(shape)]:
            draw.ellipse((x - reach, y - reach, x + reach, y + reach), fill=255)
        mask = ImageChops.darker(mask, stroke)
    elif style != "filled":
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    return np.asarray(mask.reduce(SUPERSAMPLING), dtype=np.float32) / 255


# --- Sampling and rendering -----------------------------------------------------------------------------


def sample_attributes(rng: np.random.Generator, shapes: Sequence[str] = SHAPES, style: str = "filled",
                      fixed: Mapping[str, str] | None = None) -> ShapeAttributes:  # fmt: skip
    """Draw one image's attributes; ``fixed`` (e.g. from ``parse_prompt``) forces some of them."""
    fixed = {name: value for name, value in (fixed or {}).items() if value is not None}
    fixed.setdefault("style", style)
    check_labels(fixed)
    if fixed.get("colour") is not None and fixed.get("colour") == fixed.get("background"):
        raise ValueError(f"the shape cannot have its background's colour ({fixed['colour']})")
    # Every random number is drawn whatever is forced, so forcing one attribute leaves the others of the
    # same seed unchanged: this gives counterfactual pairs for free.
    shape = shapes[rng.integers(len(shapes))]
    colour_index = int(rng.integers(len(COLOUR_NAMES)))
    background_step = int(rng.integers(1, len(COLOUR_NAMES)))  # never 0, so never the shape's colour
    size = SIZES[rng.integers(len(SIZES))]
    position = POSITIONS[rng.integers(len(POSITIONS))]
    size_factor = rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)
    dx, dy = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)

    shape, size, position = fixed.get("shape", shape), fixed.get("size", size), fixed.get("position", position)

    def step_from(name: str) -> str:
        return COLOUR_NAMES[(COLOUR_NAMES.index(name) + background_step) % len(COLOUR_NAMES)]

    if "background" in fixed and "colour" not in fixed:
        background, colour = fixed["background"], step_from(fixed["background"])
    else:
        colour = fixed.get("colour", COLOUR_NAMES[colour_index])
        background = fixed.get("background", step_from(colour))

    r = SIZE_RADII[size] * size_factor
    row, column = divmod(POSITIONS.index(position), 3)
    lowest, highest = r + EDGE_MARGIN_PX / IMAGE_SIZE, 1 - r - EDGE_MARGIN_PX / IMAGE_SIZE
    cx = float(np.clip(GRID_CENTRES[column] + dx, lowest, highest))
    cy = float(np.clip(GRID_CENTRES[row] + dy, lowest, highest))
    return ShapeAttributes(shape, colour, background, size, position, fixed["style"], float(r), cx, cy)


def _jittered_colour(name: str, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.array(COLOURS[name], dtype=np.float32) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), 0, 255)


def render(attrs: ShapeAttributes, rng: np.random.Generator) -> np.ndarray:
    """The image for ``attrs``: uint8 (64, 64, 3). ``rng`` supplies the colour jitter."""
    coverage = render_mask(attrs.shape, attrs.r, attrs.cx, attrs.cy, attrs.style)[..., None]
    shape_rgb, background_rgb = _jittered_colour(attrs.colour, rng), _jittered_colour(attrs.background, rng)
    return np.rint(background_rgb + coverage * (shape_rgb - background_rgb)).astype(np.uint8)


# --- Datasets -------------------------------------------------------------------------------------------


def batches(seed: int, batch_size: int, shapes: Sequence[str] = SHAPES, style: str = "filled",
            fixed: Mapping[str, str] | None = None, p_keep: Mapping[str, float] | None = None,
            ) -> Iterator[tuple[np.ndarray, list[str], list[ShapeAttributes]]]:  # fmt: skip
    """Endless (images (B, 64, 64, 3) uint8, captions, attributes) batches; the stream depends only on
    the seed, and its first ``n`` examples are ``generate(seed, n)``."""
    rng = np.random.Generator(np.random.PCG64(seed))
    while True:
        images = np.empty((batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        captions, attributes = [], []
        for index in range(batch_size):
            attrs = sample_attributes(rng, shapes, style, fixed)
            images[index] = render(attrs, rng)
            captions.append(caption(attrs, rng, p_keep))
            attributes.append(attrs)
        yield images, captions, attributes


def generate(seed: int, n: int, shapes: Sequence[str] = SHAPES, style: str = "filled",
             fixed: Mapping[str, str] | None = None, p_keep: Mapping[str, float] | None = None,
             ) -> tuple[np.ndarray, list[str], list[ShapeAttributes]]:  # fmt: skip
    """``n`` examples: images (n, 64, 64, 3) uint8, captions and attributes, fully determined by ``seed``."""
    return next(batches(seed, n, shapes, style, fixed, p_keep))


def write_dataset(folder: str | Path, n: int, seed: int, shapes: Sequence[str] = SHAPES,
                  style: str = "filled") -> Path:  # fmt: skip
    """Write ``generate(seed, n)`` as 00000.png + 00000.txt caption pairs (the kohya convention) and a
    metadata.jsonl (``file_name``, ``text`` and the attributes, the Hugging Face imagefolder convention)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{folder} already exists and is not an empty folder; refusing to mix datasets")
    folder.mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(n - 1)))
    stream = batches(seed, min(n, 256), shapes, style)
    written = 0
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as metadata:
        while written < n:
            images, captions, attributes = next(stream)
            for image, text, attrs in list(zip(images, captions, attributes))[: n - written]:
                stem = f"{written:0{digits}d}"
                Image.fromarray(image).save(folder / f"{stem}.png")
                (folder / f"{stem}.txt").write_text(text, encoding="utf-8")
                record = {"file_name": f"{stem}.png", "text": text, **asdict(attrs)}
                record.update({key: round(record[key], 5) for key in ("r", "cx", "cy")})
                metadata.write(json.dumps(record) + "\n")
                written += 1
    return folder


if __name__ == "__main__":  # quick check: python -m imagegen.data.shapes
    import time

    generate(0, 50)  # warm the geometry caches
    count, started = 2000, time.perf_counter()
    _, sample_captions, _ = generate(1, count)
    elapsed = time.perf_counter() - started
    print(f"rendered {count} images in {elapsed:.2f} s: {count / elapsed:.0f} images/s")
    print("\n".join(sample_captions[:5]))
