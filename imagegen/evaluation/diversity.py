"""Seed diversity of a shapes-world model: what the seeds do with the attributes a prompt leaves free.

Prompts are drawn from the grammar with each optional attribute stated half the time (`diversity_prompts`), or are
the short prompts "a {colour} {shape}"; each is generated with N seeds and read by the pixel oracle. For every
(prompt, free attribute) the plug-in entropy of the N readings is compared with what N images of the generator itself
would give (`shapes.sample_attributes` with the prompt's attributes fixed: the training distribution):

    normalized entropy = H(readings) / E[H(N draws from the generator)]

so 1.0 means "as varied as the data" whatever N is (the plug-in entropy of few draws is biased low; dividing by the
entropy of the distribution itself, `vs_data`, is reported too: with 16 seeds even the generator scores only ~0.9
on position there). Per attribute the report gives the mean over the prompts that leave it free, the same ratio for
all those images pooled, and the pooled counts of each value. An image is *invisible* when the shape's colour is
the background's: the background reads as the colour the prompt asks for, or nothing stands out at all.
"""
from __future__ import annotations

import functools
import io
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import shapes
from . import oracle
from .adherence import generate_all, grammar_prompts

FREE = ("colour", "background", "size", "position")  # what a prompt may leave open (style is filled unless stated)
STATE_PROBABILITY = 0.5  # each optional attribute of a diversity prompt is stated this often
REFERENCE_DRAWS = 5_000  # generator draws per prompt for its attribute distributions (+-0.5 points a value)
EXPECTATION_DRAWS = 2_000  # simulated N-seed readings for the expected plug-in entropy
INVISIBLE_COLOUR, NO_SHAPE_COLOUR = (220, 30, 30), (240, 160, 0)


def diversity_prompts(count: int, seed: int, shape_names=shapes.SHAPES,
                      style: str = "filled") -> list[tuple[str, dict]]:
    """Grammar prompts in which every optional attribute is stated with probability STATE_PROBABILITY."""
    return grammar_prompts(count, seed, shape_names, style, state_probability=dict.fromkeys(FREE, STATE_PROBABILITY))


def entropy(counts) -> float:
    """Plug-in (maximum-likelihood) entropy in nats of a histogram."""
    values = np.asarray([c for c in counts if c > 0], dtype=float)
    if values.sum() == 0:
        return 0.0
    p = values / values.sum()
    return float(-(p * np.log(p)).sum())


def generator_distribution(stated: dict, attribute: str) -> dict:
    """{value: probability} of `attribute` in the generator's images of a prompt stating `stated` (sampled)."""
    return _distributions(tuple(sorted(stated.items())))[attribute]


@functools.lru_cache(maxsize=256)
def _distributions(stated: tuple, draws: int = REFERENCE_DRAWS, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    samples = [shapes.sample_attributes(rng, fixed=dict(stated)) for _ in range(draws)]
    out = {}
    for name in FREE:
        counts = Counter(getattr(attrs, name) for attrs in samples)
        out[name] = {value: counts[value] / draws for value in shapes.VOCABULARY[name] if counts[value]}
    return out


def expected_entropy(probabilities, n: int, draws: int = EXPECTATION_DRAWS, seed: int = 0) -> float:
    """E[plug-in entropy of n draws from `probabilities`], by simulation."""
    if n <= 1:
        return 0.0
    rng = np.random.default_rng(seed)
    p = np.asarray(list(probabilities), dtype=float)
    counts = rng.multinomial(n, p / p.sum(), size=draws)  # (draws, K)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = counts / n
        terms = np.where(counts > 0, -q * np.log(q), 0.0)
    return float(terms.sum(axis=1).mean())


def is_invisible(reading: oracle.OracleReading, stated: dict) -> bool:
    """The shape has its background's colour: the background reads as the asked colour, or nothing stands out."""
    return reading.colour is None or (stated.get("colour") is not None and reading.background == stated["colour"])


@dataclass
class DiversityReport:
    attributes: dict = field(default_factory=dict)  # free attribute -> entropies, counts, prompts
    invisible: float = 0.0  # fraction of images whose shape has the background's colour
    no_shape: float = 0.0  # fraction of images the oracle reads as no shape (nothing fits a template)
    images: int = 0
    seeds_per_prompt: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)
    prompts: list = field(default_factory=list)  # per prompt: prompt, stated, seeds, readings, per-attribute entropy

    def summary(self) -> dict:
        return {"images": self.images, "seeds_per_prompt": self.seeds_per_prompt, "invisible": self.invisible,
                "no_shape": self.no_shape, "attributes": self.attributes, "seconds": self.seconds,
                "settings": self.settings}


def measure(readings_by_prompt: list[list[oracle.OracleReading]], prompts: list[tuple[str, dict]]) -> DiversityReport:
    """The report for already-read images: readings_by_prompt[j] are prompt j's N readings."""
    report = DiversityReport()
    per_attribute = {name: {"normalized": [], "vs_data": [], "readings": Counter(), "reference": Counter()}
                     for name in FREE}
    invisible = no_shape = 0
    for (prompt, stated), readings in zip(prompts, readings_by_prompt):
        entry = {"prompt": prompt, "stated": stated, "read": [r.labels() for r in readings],
                 "invisible": [is_invisible(r, stated) for r in readings], "entropy": {}}
        invisible += sum(entry["invisible"])
        no_shape += sum(r.colour is not None and r.shape is None for r in readings)
        for name in FREE:
            if name in stated:
                continue
            values = [getattr(r, name) for r in readings if getattr(r, name) is not None]
            reference = generator_distribution(stated, name)
            counts = Counter(values)
            read_entropy = entropy(counts.values())
            expected = expected_entropy(reference.values(), len(values))
            data_entropy = entropy(reference.values())
            stats = per_attribute[name]
            if expected > 0:
                stats["normalized"].append(read_entropy / expected)
                stats["vs_data"].append(read_entropy / data_entropy)
            stats["readings"].update(counts)
            for value, p in reference.items():
                stats["reference"][value] += p * len(values)
            entry["entropy"][name] = {"read": round(read_entropy, 4), "expected": round(expected, 4),
                                      "counts": dict(counts)}
        report.prompts.append(entry)
    for name, stats in per_attribute.items():
        if not stats["normalized"]:
            continue
        pooled = entropy(stats["readings"].values()) / entropy(stats["reference"].values())
        total = sum(stats["readings"].values())
        report.attributes[name] = {
            "normalized_entropy": round(float(np.mean(stats["normalized"])), 4),
            "vs_data": round(float(np.mean(stats["vs_data"])), 4),
            "pooled": round(pooled, 4),
            "prompts": len(stats["normalized"]),
            "read": {value: round(stats["readings"][value] / total, 4) for value in shapes.VOCABULARY[name]},
            "data": {value: round(stats["reference"][value] / total, 4) for value in shapes.VOCABULARY[name]},
        }
    report.images = sum(len(readings) for readings in readings_by_prompt)
    report.invisible = invisible / max(report.images, 1)
    report.no_shape = no_shape / max(report.images, 1)
    return report


def evaluate(pipe, prompts: list[tuple[str, dict]], seeds_per_prompt: int, base_seed: int, prior=None, decoder=None,
             loras: list | None = None, progress: bool = True,
             min_iou: float = oracle.MIN_IOU) -> tuple[DiversityReport, list]:
    """Generate every prompt with `seeds_per_prompt` seeds (prompt j: seeds base_seed + j * N + k), read every image
    and measure; returns the report and the images (prompt by prompt)."""
    started = time.perf_counter()
    results = generate_all(pipe, [prompt for prompt, _ in prompts], seeds_per_prompt, base_seed, prior=prior,
                           decoder=decoder, loras=loras, progress=progress, desc="diversity")
    images = [image for result in results for image in result.images]
    readings = [oracle.read_image(image, min_iou=min_iou) for image in images]
    n = seeds_per_prompt
    report = measure([readings[j * n:(j + 1) * n] for j in range(len(prompts))], prompts)
    for entry, result in zip(report.prompts, results):
        entry["seeds"] = [record.seed for record in result.records]
    report.seeds_per_prompt = n
    report.seconds = time.perf_counter() - started
    return report, images


def diversity_grid(images, report: DiversityReport, frame: int = 2):
    """One row per prompt, one column per seed, each row labelled with its prompt and the normalized entropy of
    each free attribute; invisible shapes framed red, no-shape readings orange."""
    from PIL import ImageOps

    from ..grid import BACKGROUND, prompt_grid

    n, rows = report.seeds_per_prompt, []
    for j, entry in enumerate(report.prompts):
        tiles = []
        for image, read, invisible in zip(images[j * n:(j + 1) * n], entry["read"], entry["invisible"]):
            colour = INVISIBLE_COLOUR if invisible else NO_SHAPE_COLOUR if read["shape"] is None else BACKGROUND
            tiles.append(ImageOps.expand(image, border=frame, fill=colour))
        free = ", ".join(f"{name} {stats['read'] / stats['expected']:.2f}" if stats["expected"] else name
                         for name, stats in entry["entropy"].items())
        rows.append((f"{entry['prompt']}" + (f" - entropy: {free}" if free else ""), tiles))
    return prompt_grid(rows, tile=images[0].width + 2 * frame)


def write_report(folder: str | Path, report: DiversityReport, images) -> tuple[Path, Path]:
    """`diversity.json` and `diversity-grid.png` in folder, each written atomically and never over another file."""
    from ..png import write_new_file

    folder = Path(folder)
    payload = {**report.summary(), "prompts": report.prompts}
    json_path = write_new_file(folder / "diversity.json", json.dumps(payload, indent=1).encode())
    buffer = io.BytesIO()
    diversity_grid(images, report).save(buffer, format="PNG")
    grid_path = write_new_file(folder / "diversity-grid.png", buffer.getvalue())
    return json_path, grid_path
