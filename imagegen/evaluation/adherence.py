"""Prompt adherence of a shapes-world model, measured by the pixel oracle (not by CLIP).

Prompts are drawn from the grammar `a [size] [colour] <shape> [position] [on a <colour> background]` with a fixed
seed; each is generated with several seeds; the oracle reads every image back, and each attribute the prompt states
is scored. Reported: per-attribute accuracy (over the prompts that state it), all-stated-attributes accuracy, and a
grid of examples with failures framed in red.
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


def grammar_prompts(count: int, seed: int, shape_names=shapes.SHAPES, style: str = "filled") -> list[tuple[str, dict]]:
    """(prompt, stated attributes) pairs from the shapes grammar, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(count):
        attrs = shapes.sample_attributes(rng, shapes=shape_names, style=style)
        stated = {name: getattr(attrs, name) for name, p in STATE_PROBABILITY.items() if rng.random() < p}
        stated["shape"] = attrs.shape
        if style != "filled":
            stated["style"] = style
        prompt = captions.caption_from(stated)
        prompts.append((prompt, stated))
    return prompts


@dataclass
class AdherenceReport:
    accuracy: dict = field(default_factory=dict)  # attribute -> fraction correct over prompts stating it
    counts: dict = field(default_factory=dict)  # attribute -> number of images scored for it
    all_correct: float = 0.0
    pairs: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)  # per image: prompt, seed, stated, read, correct

    def summary(self) -> dict:
        return {"pairs": self.pairs, "all_attributes": self.all_correct, "accuracy": self.accuracy,
                "counts": self.counts, "seconds": self.seconds, "settings": self.settings}


def evaluate(pipe, prompts: list[tuple[str, dict]], seeds_per_prompt: int, base_seed: int, prior=None, decoder=None,
             rerank: int = 1, loras: list | None = None, progress: bool = True) -> tuple[AdherenceReport, list]:
    """Generate every prompt with `seeds_per_prompt` seeds and score each image; returns the report and images.
    `loras` (LoraRequest list) are applied to every generation; None leaves the pipeline's adapters as they are."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    report, images = AdherenceReport(), []
    hits = {name: 0 for name in SCORED}
    totals = {name: 0 for name in SCORED}
    all_hits = 0
    for index, (prompt, stated) in enumerate(tqdm(prompts, desc="eval", disable=not progress)):
        seed = base_seed + index * seeds_per_prompt
        kwargs = dict(num_images=seeds_per_prompt, seed=seed, prior=prior, decoder=decoder, loras=loras, progress=False)
        if rerank > 1:
            from ..rerank import generate

            result = generate(pipe, prompt=prompt, rerank=rerank, **kwargs)
        else:
            result = pipe(prompt, **kwargs)
        for image, record in zip(result.images, result.records):
            reading = oracle.read_image(image)
            correct = oracle.score(reading, stated)
            for name in stated:
                totals[name] += 1
                hits[name] += bool(correct[name])
            all_hits += bool(correct["all"])
            images.append(image)
            report.examples.append({"prompt": prompt, "seed": record.seed, "prior_seed": record.prior_seed,
                                    "stated": stated, "read": reading.labels(), "correct": correct})
    report.pairs = len(report.examples)
    report.accuracy = {name: hits[name] / totals[name] for name in SCORED if totals[name]}
    report.counts = {name: totals[name] for name in SCORED if totals[name]}
    report.all_correct = all_hits / max(report.pairs, 1)
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
