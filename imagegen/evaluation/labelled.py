"""Labelled folders of fresh shapes-world renders, one subfolder per class of one attribute, for
`imagegen classify --eval` (the zero-shot accuracy of a CLIP pair on the world it was trained on)."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..data import shapes

ATTRIBUTES = ("shape", "colour", "background", "size", "position")


def write_labelled_folders(folder: str | Path, count: int, seed: int, attribute: str) -> Path:
    """`count` renders (seed `seed`, never a training seed) sorted into `folder/<class>/NNNNN.png`; class names use
    `_` for spaces, as `imagegen classify --eval` reads them."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be one of {', '.join(ATTRIBUTES)}, got {attribute!r}")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{str(folder)!r} exists and is not empty")
    images, _, attributes = shapes.generate(seed, count)
    for index, (image, attrs) in enumerate(zip(images, attributes)):
        label = getattr(attrs, attribute).replace(" ", "_")
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / label / f"{index:05d}.png")
    return folder
