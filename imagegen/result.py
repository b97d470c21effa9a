"""What a generation takes and returns: mix items in, images out with one GenerationRecord each, ready to save."""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .record import GenerationRecord, MixPart

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PROMPT_QUOTE_CHARS = 60  # an error quotes at most this much of a prompt


@dataclass
class MixItem:
    """One weighted ingredient of an unCLIP mix: a text prompt or an image (with the file it came from)."""

    text: str | None = None
    image: object | None = None  # PIL.Image.Image
    weight: float = 1.0
    image_path: str | None = None

    @classmethod
    def from_file(cls, path: str | Path, weight: float = 1.0) -> "MixItem":
        return cls(image=load_image(Path(path)), weight=weight, image_path=str(path))

    def validate(self) -> None:
        if (self.text is None) == (self.image is None):
            raise UserError("a mix item is either a text or an image")
        if self.text is not None:
            if not self.text.strip():
                raise UserError("a prompt must not be empty")
            check_prompt_text(self.text, "the prompt")
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight):
            raise UserError(f"a mix weight must be a finite number, got {self.weight!r}")

    def part(self) -> MixPart:
        if self.text is not None:
            return MixPart(weight=self.weight, text=self.text)
        return MixPart(weight=self.weight, image=self.image_path or "<in-memory image>")

    def label(self) -> str:
        return self.text if self.text is not None else f"image {self.image_path or '<in-memory>'}"


def check_prompt_text(text: str, where: str) -> None:
    """Refuse control characters (NUL and the like; newlines and tabs are text): they reach no tokenizer intact."""
    bad = next((i for i, ch in enumerate(text) if unicodedata.category(ch) == "Cc" and ch not in "\n\t"), None)
    if bad is not None:
        raise UserError(f"{where} holds the control character {text[bad]!r} at position {bad} "
                        f"(in {text[:PROMPT_QUOTE_CHARS]!r}); remove it")


def load_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError):
        raise UserError(f"cannot read image {str(path)!r}; give a PNG, JPEG or WebP file") from None


def describe_mix(items: list[MixItem]) -> str:
    """The prompt line of a mix: a plain prompt alone, or `a:0.7 | b:0.3`."""
    if len(items) == 1 and items[0].text is not None and items[0].weight == 1.0:
        return items[0].text
    return " | ".join(f"{item.label()}:{item.weight:g}" for item in items)


@dataclass
class GenerationResult:
    images: list  # PIL images
    records: list[GenerationRecord] = field(default_factory=list)  # one per image
    pixels: object = None  # float numpy array (B, H, W, 3) in [0, 1], before rounding to 8 bits

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.records]

    @property
    def prior_seeds(self) -> list[int]:
        return [r.prior_seed for r in self.records]

    def save(self, folder: str | Path) -> list[Path]:
        """Write each image as a numbered PNG with its record; never replaces an existing file."""
        from .png import save_png

        return [save_png(image, record, folder) for image, record in zip(self.images, self.records)]
