"""The shapes world's tiny English grammar, both ways: attributes -> caption, and prompt -> attributes.

    a [size] [colour] [outlined] <shape> [position] [on a <colour> background]

`caption_from` is the one sentence of the grammar that states given attributes (the training captions, the full
captions and evaluation prompts are all made with it); `caption` draws which attributes a training caption states,
and sometimes a paraphrase; `parse_prompt` reads the attributes back from a caption or a hand-written prompt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from .attributes import ALL_SHAPES, COLOURS, POSITIONS, SIZE_RADII, ShapeAttributes

CAPTION_KEEP_PROBABILITY = MappingProxyType({"colour": 0.8, "size": 0.5, "position": 0.5, "background": 0.6})
PARAPHRASE_PROBABILITY = 0.2
PARAPHRASES = (
    "a picture of {a_thing}{on_background}",
    "an image of {a_thing}{on_background}",
    "a drawing of {a_thing}{on_background}",
    "{thing}{on_background}",
    "{thing}{comma_background}",
)


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _describe(shape: str, style: str, size=None, colour=None, position=None) -> str:
    words = [size, colour, "outlined" if style == "outline" else None, shape, position]
    return " ".join(word for word in words if word)


def _on_background(background: str | None) -> str:
    return f" on {with_article(background)} background" if background else ""


def caption_from(stated: Mapping[str, str]) -> str:
    """The grammar's sentence stating exactly the attributes in `stated` (name -> value, as
    `ShapeAttributes.labels()` gives them; `shape` is required, the others optional, `style` "filled" unsaid):
    {"shape": "star", "colour": "red", "background": "orange"} -> 'a red star on an orange background'."""
    thing = _describe(stated["shape"], stated.get("style", "filled"), stated.get("size"), stated.get("colour"),
                      stated.get("position"))
    return with_article(thing) + _on_background(stated.get("background"))


def full_caption(attrs: ShapeAttributes) -> str:
    """The canonical sentence stating every attribute."""
    return caption_from(attrs.labels())


def caption(attrs: ShapeAttributes, rng: np.random.Generator, p_keep: Mapping[str, float] | None = None) -> str:
    """A random caption that states the shape, the style if outlined, and each other attribute with
    probability ``p_keep[name]``; one in five captions uses a paraphrase, so short prompts also work."""
    keep_probability = {**CAPTION_KEEP_PROBABILITY, **(p_keep or {})}
    if keep_probability.keys() != CAPTION_KEEP_PROBABILITY.keys():
        raise ValueError(f"p_keep may only set {tuple(CAPTION_KEEP_PROBABILITY)}, not {sorted(p_keep)}")
    draws = rng.random(len(keep_probability) + 2)  # one per optional attribute, paraphrase?, which one
    kept = {name: getattr(attrs, name) for name, u in zip(keep_probability, draws) if u < keep_probability[name]}
    if draws[-2] >= PARAPHRASE_PROBABILITY:
        return caption_from({"shape": attrs.shape, "style": attrs.style, **kept})
    thing = _describe(attrs.shape, attrs.style, kept.get("size"), kept.get("colour"), kept.get("position"))
    background = kept.get("background")
    parts = {
        "thing": thing,
        "a_thing": with_article(thing),
        "on_background": _on_background(background),
        "comma_background": f", {background} background" if background else "",
    }
    return PARAPHRASES[int(draws[-1] * len(PARAPHRASES))].format(**parts)


_VERTICAL = {"top": 0, "bottom": 2}
_HORIZONTAL = {"left": 0, "right": 2}
_CENTRE_WORDS = ("center", "centre", "middle")


def parse_prompt(text: str) -> dict[str, str]:
    """The attributes a prompt states, as ``{name: value}`` with values from the module's vocabularies.
    Word based, so it reads the grammar, the paraphrases and most hand-written variants."""
    words = re.findall(r"[a-z]+", text.lower())
    stated: dict[str, str] = {}
    row = column = None
    for index, word in enumerate(words):
        singular = next((stem for stem in (word, word[:-1], word[:-2]) if stem in ALL_SHAPES), word)  # stars, crosses
        follower = words[index + 1] if index + 1 < len(words) else ""
        if word in COLOURS and follower in ("background", "backdrop"):
            stated.setdefault("background", word)
        elif word in COLOURS:
            stated.setdefault("colour", word)
        elif word in SIZE_RADII:
            stated.setdefault("size", word)
        elif singular in ALL_SHAPES:
            stated.setdefault("shape", singular)
        elif word in ("outlined", "outline"):
            stated.setdefault("style", "outline")
        elif word in ("filled", "solid"):
            stated.setdefault("style", "filled")
        elif word in _VERTICAL and row is None:
            row = _VERTICAL[word]
        elif word in _HORIZONTAL and column is None:
            column = _HORIZONTAL[word]
        elif word in _CENTRE_WORDS:
            row, column = (1 if row is None else row), (1 if column is None else column)
    if row is not None or column is not None:
        stated["position"] = POSITIONS[3 * (1 if row is None else row) + (1 if column is None else column)]
    return stated
