"""Which adapters a generation asks for, and how strongly: `--lora NAME[:WEIGHT]` on the command line and the
AUTOMATIC1111 prompt syntax `<lora:NAME:WEIGHT>` or `<lora:NAME:unet=1:prior=0.5:te=0:vae=1>` (taken out of the prompt
before it is encoded). No torch here.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import UserError

COMPONENTS = ("unet", "prior", "text_encoder", "vae")
COMPONENT_ALIASES = {"unet": "unet", "prior": "prior", "te": "text_encoder", "text_encoder": "text_encoder",
                     "vae": "vae"}
PROMPT_TAG = re.compile(r"<lora:([^>]*)>")


@dataclass(frozen=True)
class LoraRequest:
    name: str
    weights: dict = field(default_factory=lambda: {c: 1.0 for c in COMPONENTS})  # component -> multiplier

    def describe(self) -> str:
        values = set(self.weights.values())
        if len(values) == 1:
            return f"{self.name}:{values.pop():g}"
        short = {"text_encoder": "te"}
        return self.name + "".join(f":{short.get(c, c)}={w:g}" for c, w in self.weights.items())


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"LoRA weight {text!r} in {where!r} is not a finite number; write e.g. 0.8")
    return value


def parse_spec(spec: str) -> LoraRequest:
    """`NAME`, `NAME:0.8` or `NAME:unet=1:prior=0.5:te=0` (components not named keep weight 0)."""
    name, *parts = spec.split(":")
    if not name:
        raise UserError(f"LoRA spec {spec!r} has no adapter name; write NAME[:WEIGHT]")
    if not parts:
        return LoraRequest(name)
    if len(parts) == 1 and "=" not in parts[0]:
        weight = _number(parts[0], spec)
        return LoraRequest(name, {c: weight for c in COMPONENTS})
    weights = {c: 0.0 for c in COMPONENTS}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in COMPONENT_ALIASES:
            raise UserError(f"LoRA spec {spec!r}: {part!r} should be COMPONENT=WEIGHT with COMPONENT one of "
                            "unet, prior, te, vae")
        weights[COMPONENT_ALIASES[key]] = _number(value, spec)
    return LoraRequest(name, weights)


def split_prompt(prompt: str) -> tuple[str, list[LoraRequest]]:
    """The prompt without its `<lora:...>` tags, and the requests the tags make."""
    requests = [parse_spec(tag) for tag in PROMPT_TAG.findall(prompt)]
    cleaned = " ".join(PROMPT_TAG.sub(" ", prompt).split())
    return cleaned, requests


def merge(requests: list[LoraRequest]) -> list[LoraRequest]:
    """One request per adapter; a later mention of the same adapter wins."""
    by_name = {r.name: r for r in requests}
    return list(by_name.values())
