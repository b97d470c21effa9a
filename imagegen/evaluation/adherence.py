"""Prompt adherence of a shapes-world model, measured by the pixel oracle (not by CLIP).

Prompts are drawn from the grammar `a [size] [colour] <shape> [position] [on a <colour> background]` with a fixed
seed; each is generated with several seeds; the oracle reads every image back, and each attribute the prompt states
is scored. Reported: per-attribute accuracy (over the prompts that state it), all-stated-attributes accuracy, and a
grid of examples with failures framed in red. The oracle reads "no shape" below its IoU threshold (oracle.MIN_IOU);
the report also gives the numbers without it (`without_min_iou`: the oracle as it was, always the best template).
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import captions, shapes
from . import oracle

SCORED = ("shape", "colour", "background", "size", "position", "style")
STATE_PROBABILITY = {"colour": 0.8, "size": 0.6, "position": 0.6, "background": 0.7}
PASS_COLOUR, FAIL_COLOUR = (40, 170, 60), (220, 30, 30)
BATCH_IMAGES = 64  # images per pipeline call (the shapes model's limit at its 64x64); whole prompts per call


def grammar_prompts(count: int, seed: int, shape_names=shapes.SHAPES, style: str = "filled",
                    state_probability: dict | None = None) -> list[tuple[str, dict]]:
    """(prompt, stated attributes) pairs from the shapes grammar, fixed by `seed`; `state_probability` (default
    STATE_PROBABILITY) says how often each optional attribute is stated."""
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(count):
        attrs = shapes.sample_attributes(rng, shapes=shape_names, style=style)
        stated = {name: getattr(attrs, name) for name, p in (state_probability or STATE_PROBABILITY).items()
                  if rng.random() < p}
        stated["shape"] = attrs.shape
        if style != "filled":
            stated["style"] = style
        prompt = captions.caption_from(stated)
        prompts.append((prompt, stated))
    return prompts


def short_prompts(count: int, seed: int, shape_names=shapes.SHAPES, style: str = "filled") -> list[tuple[str, dict]]:
    """`count` of the prompts "a {colour} {shape}" (every colour with every shape, in an order fixed by `seed`;
    repeated when count is larger)."""
    every = [{"shape": shape, "colour": colour, **({"style": style} if style != "filled" else {})}
             for shape in shape_names for colour in shapes.COLOUR_NAMES]
    order = np.random.default_rng(seed).permutation(len(every))
    chosen = [every[order[i % len(every)]] for i in range(count)]
    return [(captions.caption_from(stated), stated) for stated in chosen]


def generate_all(pipe, texts: list[str], seeds_per_prompt: int, base_seed: int, rerank: int = 1, progress: bool = True,
                 desc: str = "eval", batch_images: int = BATCH_IMAGES, **call) -> list:
    """One result (images, records) per text, made with seeds base_seed + j * seeds_per_prompt + k (k < N) as one
    call per prompt would, but with whole prompts batched into calls of up to `batch_images` images (the pixels of a
    batched call match separate calls to 1/255). `call`: prior, decoder, loras for every call."""
    from types import SimpleNamespace

    from tqdm.auto import tqdm

    n = seeds_per_prompt
    per_call = max(1, batch_images // (n * rerank))
    results = []
    with tqdm(total=len(texts), desc=desc, disable=not progress) as bar:
        for start in range(0, len(texts), per_call):
            chunk = texts[start:start + per_call]
            kwargs = dict(num_images=n, seed=[base_seed + j * n for j in range(start, start + len(chunk))],
                          progress=False, **call)
            if rerank > 1:
                from ..rerank import generate

                result = generate(pipe, prompt=chunk, rerank=rerank, **kwargs)
            else:
                result = pipe(chunk, **kwargs)
            results += [SimpleNamespace(images=result.images[j * n:(j + 1) * n],
                                        records=result.records[j * n:(j + 1) * n]) for j in range(len(chunk))]
            bar.update(len(chunk))
    return results


@dataclass
class AdherenceReport:
    accuracy: dict = field(default_factory=dict)  # attribute -> fraction correct over prompts stating it
    counts: dict = field(default_factory=dict)  # attribute -> number of images scored for it
    all_correct: float = 0.0
    no_shape: float = 0.0  # fraction of images read as no shape (the best template's IoU below the threshold)
    without_min_iou: dict = field(default_factory=dict)  # accuracy and all_attributes of the oracle without it
    pairs: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)  # per image: prompt, seed, stated, read, correct

    def summary(self) -> dict:
        return {"pairs": self.pairs, "all_attributes": self.all_correct, "accuracy": self.accuracy,
                "counts": self.counts, "no_shape": self.no_shape, "without_min_iou": self.without_min_iou,
                "seconds": self.seconds, "settings": self.settings}


def evaluate(pipe, prompts: list[tuple[str, dict]], seeds_per_prompt: int, base_seed: int, prior=None, decoder=None,
             rerank: int = 1, loras: list | None = None, progress: bool = True,
             min_iou: float = oracle.MIN_IOU) -> tuple[AdherenceReport, list]:
    """Generate every prompt with `seeds_per_prompt` seeds and score each image; returns the report and images.
    `loras` (LoraRequest list) are applied to every generation; None leaves the pipeline's adapters as they are.
    `min_iou`: the oracle's no-shape threshold (the report gives the scores without it too)."""
    started = time.perf_counter()
    report, images = AdherenceReport(), []
    hits = {name: 0 for name in SCORED}
    totals = {name: 0 for name in SCORED}
    raw_hits = {name: 0 for name in SCORED}
    all_hits = raw_all_hits = no_shape = 0
    results = generate_all(pipe, [prompt for prompt, _ in prompts], seeds_per_prompt, base_seed, rerank=rerank,
                           progress=progress, prior=prior, decoder=decoder, loras=loras)
    for (prompt, stated), result in zip(prompts, results):
        for image, record in zip(result.images, result.records):
            raw = oracle.read_image(image, min_iou=0.0)
            reading = oracle.with_min_iou(raw, min_iou)
            correct, raw_correct = oracle.score(reading, stated), oracle.score(raw, stated)
            for name in stated:
                totals[name] += 1
                hits[name] += bool(correct[name])
                raw_hits[name] += bool(raw_correct[name])
            all_hits += bool(correct["all"])
            raw_all_hits += bool(raw_correct["all"])
            no_shape += raw.shape is not None and reading.shape is None
            images.append(image)
            report.examples.append({"prompt": prompt, "seed": record.seed, "prior_seed": record.prior_seed,
                                    "stated": stated, "read": reading.labels(), "correct": correct,
                                    "iou": round(raw.iou, 4), "best_fit": raw.shape})
    report.pairs = len(report.examples)
    report.accuracy = {name: hits[name] / totals[name] for name in SCORED if totals[name]}
    report.counts = {name: totals[name] for name in SCORED if totals[name]}
    report.all_correct = all_hits / max(report.pairs, 1)
    report.no_shape = no_shape / max(report.pairs, 1)
    report.without_min_iou = {"min_iou": 0.0, "all_attributes": raw_all_hits / max(report.pairs, 1),
                              "accuracy": {name: raw_hits[name] / totals[name] for name in SCORED if totals[name]}}
    report.settings = {"min_iou": min_iou}
    report.seconds = time.perf_counter() - started
    return report, images


def failure_grid(images, examples, columns: int = 16, scale: int = 1, frame: int = 2):
    """Every image framed green (all stated attributes read back) or red (some failed)."""
    from PIL import Image, ImageOps

    framed = []
    for image, example in zip(images, examples):
        colour = PASS_COLOUR if example["correct"]["all"] else FAIL_COLOUR
        tile = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        framed.append(ImageOps.expand(tile, border=frame, fill=colour))
    if not framed:
        raise ValueError("no images to put in a grid")
    width, height = framed[0].size
    rows = (len(framed) + columns - 1) // columns
    grid = Image.new("RGB", (width * min(columns, len(framed)), height * rows), (255, 255, 255))
    for i, tile in enumerate(framed):
        grid.paste(tile, ((i % columns) * width, (i // columns) * height))
    return grid


def write_report(folder: str | Path, report: AdherenceReport, images) -> tuple[Path, Path]:
    """`adherence.json` and `adherence-grid.png` in folder, each written atomically and never over another file."""
    from ..png import write_new_file

    folder = Path(folder)
    payload = {**report.summary(), "examples": report.examples}
    json_path = write_new_file(folder / "adherence.json", json.dumps(payload, indent=1).encode())
    grid = failure_grid(images, report.examples)
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    grid_path = write_new_file(folder / "adherence-grid.png", buffer.getvalue())
    return json_path, grid_path
