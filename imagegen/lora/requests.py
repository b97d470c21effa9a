"""Which adapters a generation asks for, and how strongly: `--lora NAME[:WEIGHT]` on the command line and the
AUTOMATIC1111 prompt syntax `<lora:NAME:WEIGHT>` or `<lora:NAME:unet=1:prior=0.5:te=0:vae=1>` (taken out of the prompt
before it is encoded). No torch here.

`start=F` / `stop=F` (fractions of the decoder's steps) apply the adapter's U-Net part to that stretch of the denoising
loop only, as LoRA step control in ComfyUI (hook keyframes) and the A1111 extension loractl:
`<lora:outline:1:start=0.4>` leaves the first 40% of the steps, where the composition is laid out, to the base model.
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
WINDOW_KEYS = ("start", "stop")
FULL_WINDOW = (0.0, 1.0)


@dataclass(frozen=True)
class LoraRequest:
    name: str
    weights: dict = field(default_factory=lambda: {c: 1.0 for c in COMPONENTS})  # component -> multiplier
    window: tuple = FULL_WINDOW  # (start, stop): the fractions of the decoder's steps its U-Net part is applied in

    def describe(self) -> str:
        values = set(self.weights.values())
        window = "".join(f":{k}={v:g}" for k, v, default in zip(WINDOW_KEYS, self.window, FULL_WINDOW) if v != default)
        if len(values) == 1:
            return f"{self.name}:{values.pop():g}{window}"
        short = {"text_encoder": "te"}
        return self.name + "".join(f":{short.get(c, c)}={w:g}" for c, w in self.weights.items()) + window


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"LoRA weight {text!r} in {where!r} is not a finite number; write e.g. 0.8")
    return value


def parse_spec(spec: str) -> LoraRequest:
    """`NAME`, `NAME:0.8` or `NAME:unet=1:prior=0.5:te=0` (components not named keep weight 0), each optionally
    followed by `:start=F` and/or `:stop=F`."""
    name, *parts = spec.split(":")
    if not name:
        raise UserError(f"LoRA spec {spec!r} has no adapter name; write NAME[:WEIGHT]")
    window = dict(zip(WINDOW_KEYS, FULL_WINDOW))
    for part in [p for p in parts if p.partition("=")[0] in WINDOW_KEYS]:
        key, _, value = part.partition("=")
        window[key] = _number(value, spec)
        parts.remove(part)
    start, stop = window["start"], window["stop"]
    if not 0 <= start < stop <= 1:
        raise UserError(f"LoRA spec {spec!r}: start {start:g} and stop {stop:g} must be fractions of the steps with "
                        "0 <= start < stop <= 1")
    if not parts:
        return LoraRequest(name, window=(start, stop))
    if len(parts) == 1 and "=" not in parts[0]:
        weight = _number(parts[0], spec)
        return LoraRequest(name, {c: weight for c in COMPONENTS}, (start, stop))
    weights = {c: 0.0 for c in COMPONENTS}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in COMPONENT_ALIASES:
            raise UserError(f"LoRA spec {spec!r}: {part!r} should be COMPONENT=WEIGHT with COMPONENT one of "
                            "unet, prior, te, vae (or start=F, stop=F)")
        weights[COMPONENT_ALIASES[key]] = _number(value, spec)
    return LoraRequest(name, weights, (start, stop))


def split_prompt(prompt: str) -> tuple[str, list[LoraRequest]]:
    """The prompt without its `<lora:...>` tags, and the requests the tags make."""
    requests = [parse_spec(tag) for tag in PROMPT_TAG.findall(prompt)]
    cleaned = " ".join(PROMPT_TAG.sub(" ", prompt).split())
    return cleaned, requests


def merge(requests: list[LoraRequest]) -> list[LoraRequest]:
    """One request per adapter; a later mention of the same adapter wins."""
    by_name = {r.name: r for r in requests}
    return list(by_name.values())
