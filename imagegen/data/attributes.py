"""What an image of the shapes world shows: six attributes, each from a small vocabulary, and `ShapeAttributes`.

The renderer (imagegen.data.shapes), the caption grammar (imagegen.data.captions) and the evaluation oracle read
these vocabularies, so a word means the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

SHAPES = ("circle", "square", "triangle", "star", "cross")
ALL_SHAPES = SHAPES + ("heart",)  # the heart is held out: the base model never sees it

COLOURS = MappingProxyType({
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 220, 30), "green": (40, 170, 60),
    "blue": (40, 80, 220), "purple": (140, 50, 190), "white": (245, 245, 245), "black": (20, 20, 20),
})  # fmt: skip
COLOUR_NAMES = tuple(COLOURS)

SIZE_RADII = MappingProxyType({"small": 0.14, "medium": 0.22, "large": 0.32})  # fractions of the image side
SIZES = tuple(SIZE_RADII)

POSITIONS = (
    "at the top left", "at the top", "at the top right",
    "at the left", "in the center", "at the right",
    "at the bottom left", "at the bottom", "at the bottom right",
)  # fmt: skip

STYLES = ("filled", "outline")  # the outline style is held out, like the heart

ATTRIBUTE_NAMES = ("shape", "colour", "background", "size", "position", "style")
VOCABULARY = MappingProxyType({
    "shape": ALL_SHAPES, "colour": COLOUR_NAMES, "background": COLOUR_NAMES,
    "size": SIZES, "position": POSITIONS, "style": STYLES,
})  # fmt: skip


@dataclass(frozen=True)
class ShapeAttributes:
    """What one image shows: the discrete labels plus the continuous geometry actually drawn."""

    shape: str
    colour: str
    background: str
    size: str
    position: str
    style: str
    r: float  # size radius, fraction of the side
    cx: float  # centre, fractions of the side, y pointing down
    cy: float

    def labels(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ATTRIBUTE_NAMES}


def check_labels(labels: Mapping[str, str]) -> None:
    """A ValueError naming the first attribute or value that is not in the vocabularies."""
    for name, value in labels.items():
        if name not in VOCABULARY:
            raise ValueError(f"unknown attribute {name!r}; expected some of {ATTRIBUTE_NAMES}")
        if value not in VOCABULARY[name]:
            raise ValueError(f"unknown {name} {value!r}; expected one of {VOCABULARY[name]}")
