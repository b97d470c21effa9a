"""What a generation returns: images, the seeds they were made from, and every parameter, ready to save as PNG."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import UserError


@dataclass
class MixItem:
    """One weighted ingredient of an unCLIP mix: a text prompt or an image (with the file it came from)."""

    text: str | None = None
    image: object | None = None  # PIL.Image.Image
    weight: float = 1.0
    image_path: str | None = None

    def validate(self) -> None:
        if (self.text is None) == (self.image is None):
            raise UserError("a mix item is either a text or an image")
        if self.text is not None and not self.text.strip():
            raise UserError("a prompt must not be empty")
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight):
            raise UserError(f"a mix weight must be a finite number, got {self.weight!r}")

    def record(self) -> dict:
        if self.text is not None:
            return {"text": self.text, "weight": self.weight}
        return {"image": self.image_path or "<in-memory image>", "weight": self.weight}

    def label(self) -> str:
        return self.text if self.text is not None else f"image {self.image_path or '<in-memory>'}"


def describe_mix(items: list[MixItem]) -> str:
    """The prompt line of a mix: a plain prompt alone, or `a:0.7 | b:0.3`."""
    if len(items) == 1 and items[0].text is not None and items[0].weight == 1.0:
        return items[0].text
    return " | ".join(f"{item.label()}:{item.weight:g}" for item in items)


@dataclass
class GenerationResult:
    images: list  # PIL images
    records: list[dict] = field(default_factory=list)  # one dict of every parameter per image
    pixels: object = None  # float numpy array (B, H, W, 3) in [0, 1], before rounding to 8 bits

    @property
    def seeds(self) -> list[int]:
        return [r["seed"] for r in self.records]

    @property
    def prior_seeds(self) -> list[int]:
        return [r["prior_seed"] for r in self.records]

    @classmethod
    def build(cls, images, pipe, items, negative_prompt, seeds, prior_seeds, prior, decoder) -> "GenerationResult":
        shared = {
            "prompt": describe_mix(items),
            "negative_prompt": negative_prompt,
            "mix": [item.record() for item in items],
            "model": pipe.model.name,
            "model_ref": pipe.model.ref,
            "steps": decoder.steps,
            "guidance": decoder.guidance,
            "scheduler": decoder.scheduler,
            "width": decoder.width,
            "height": decoder.height,
            "prior_steps": prior.steps,
            "prior_guidance": prior.guidance,
            "prior_scheduler": prior.scheduler,
            "device": pipe.runtime.device,
            "dtype": str(pipe.dtype).removeprefix("torch."),
            "attention": pipe.attention_backend,
            "batch_size": len(seeds),
            "batch_seed": seeds[0],
            "batch_prior_seed": prior_seeds[0],
            "version": __version__,
        }
        loras = pipe.active_lora_records()
        if loras:
            shared["loras"] = loras
            shared["extra_infotext"] = {
                "Lora hashes": ", ".join(f"{r['name']}: {r['hash']}" for r in shared["loras"]),
                "Loras": ", ".join(f"{r['name']}:" + ":".join(f"{k}={v:g}" for k, v in r["weights"].items())
                                   + "".join(f":{k}={v:g}" for k, v in zip(("start", "stop"), r.get("window", ())))
                                   for r in shared["loras"]),
            }
        records = [
            {**shared, "seed": s, "prior_seed": ps, "batch_index": i}
            for i, (s, ps) in enumerate(zip(seeds, prior_seeds))
        ]
        return cls(images=list(images), records=records)

    def save(self, folder: str | Path) -> list[Path]:
        """Write each image as a numbered PNG with its parameters; never replaces an existing file."""
        from .png import save_png

        return [save_png(image, record, folder) for image, record in zip(self.images, self.records)]


def settings_from_record(record: dict):
    """The PriorSettings and DecoderSettings a record was made with."""
    from .settings import DecoderSettings, PriorSettings

    prior = PriorSettings(steps=record["prior_steps"], guidance=record["prior_guidance"],
                          scheduler=record["prior_scheduler"])
    decoder = DecoderSettings(steps=record["steps"], guidance=record["guidance"], scheduler=record["scheduler"],
                              width=record["width"], height=record["height"])
    return prior, decoder

