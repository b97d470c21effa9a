"""What each image of one pipeline call is made from: a `Row` per image (its prompt or mix, negative prompt and
seeds), and the LoRA adapters the call asks for. No torch here.

A call holds `num_images` images of each prompt of a list (diffusers' `num_images_per_prompt`), or of one unCLIP mix.
Image k of prompt j uses seed `seed[j] + k` and prior seed `prior_seed[j] + k`, so any image can be made again from
the seeds recorded with it, whatever else shared its batch.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

from .errors import UserError
from .result import MixItem, describe_mix
from .settings import MAX_SEED, check_seed


@dataclass(frozen=True)
class Row:
    """One image of a batch: what conditions it, and its seeds."""

    items: list  # MixItems, with <lora:...> tags taken out of their texts
    negative: str
    seed: int
    prior_seed: int
    prompt: str  # as given (tags included), for the record
    mix: tuple = ()  # MixParts, for the record of an unCLIP mix


def batch_rows(prompt, mix, negative_prompt, num_images, seed, prior_seed, loras):
    """(rows, adapter requests): requests is None when neither `loras` nor a prompt's tags ask for adapters."""
    if mix and prompt is not None:
        raise UserError("give either a prompt or mix items (a prompt can be one of the mix items), not both")
    if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 1:
        raise UserError(f"number of images must be a whole number >= 1, got {num_images!r}")
    if mix:
        groups = [list(mix)]
    elif prompt is None:
        raise UserError("nothing to generate from: give a prompt, mix items or an image for variations")
    else:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise UserError(f"prompt must be a text or a non-empty list of texts, got {prompt!r}")
        groups = [[MixItem(text=p)] for p in prompts]
    for items in groups:
        for item in items:
            item.validate()
    negatives = per_prompt("negative prompt", negative_prompt, len(groups), str)
    seeds = per_prompt("seed", seed, len(groups), int)
    seeds = [secrets.randbelow(MAX_SEED + 1) if s is None else s for s in seeds]
    prior_seeds = [s if p is None else p for s, p in zip(seeds, per_prompt("prior seed", prior_seed, len(groups), int))]
    for name, values in (("seed", seeds), ("prior seed", prior_seeds)):
        for value in values:
            check_seed(name, value)

    given = [parse_lora(spec) for spec in loras] if loras is not None else None
    rows, asked = [], []
    for j, items in enumerate(groups):
        cleaned, tags = split_lora_tags(items)
        if given is not None or tags:
            from .lora.requests import merge

            asked.append(merge(list(given or []) + tags))
        else:
            asked.append(None)
        if asked[j] != asked[0]:
            describe = lambda r: "none" if r is None else ", ".join(x.describe() for x in r) or "none"  # noqa: E731
            raise UserError(f"the prompts of one call must ask for the same LoRA adapters; prompt {j + 1} asks for "
                            f"{describe(asked[j])}, prompt 1 for {describe(asked[0])}")
        is_mix = bool(mix)
        for k in range(num_images):
            rows.append(Row(items=cleaned, negative=negatives[j], seed=(seeds[j] + k) % (MAX_SEED + 1),
                            prior_seed=(prior_seeds[j] + k) % (MAX_SEED + 1), prompt=describe_mix(items),
                            mix=tuple(item.part() for item in items) if is_mix else ()))
    return rows, asked[0]


def per_prompt(name: str, value, count: int, kind: type) -> list:
    """One value per prompt from a single value (shared) or a list of exactly `count`."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise UserError(f"{name} is a list of {len(value)}; give one per prompt ({count}) or a single value")
        values = list(value)
    else:
        values = [value] * count
    for v in values:
        if v is not None and (not isinstance(v, kind) or isinstance(v, bool)):
            raise UserError(f"{name} must be {'a text' if kind is str else 'a whole number'}, got {v!r}")
    return values


def parse_lora(spec):
    """An adapter request from "heart", "heart:0.8", "heart:unet=1:prior=0.5" or a LoraRequest."""
    from .lora.requests import LoraRequest, parse_spec

    if isinstance(spec, LoraRequest):
        return spec
    if isinstance(spec, str):
        return parse_spec(spec)
    raise UserError(f"a LoRA adapter is a spec like 'heart:0.8' or a LoraRequest, got {spec!r}")


def split_lora_tags(items: list[MixItem]):
    """The items with `<lora:...>` tags taken out of their texts, and the requests the tags make."""
    if not any(item.text and "<lora:" in item.text for item in items):
        return items, []
    from .lora.requests import split_prompt

    cleaned, requests = [], []
    for item in items:
        if item.text is None:
            cleaned.append(item)
            continue
        text, found = split_prompt(item.text)
        if not text:
            raise UserError(f"prompt {item.text!r} holds nothing but LoRA tags")
        cleaned.append(replace(item, text=text))
        requests += found
    return cleaned, requests
