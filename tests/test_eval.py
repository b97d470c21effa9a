"""`imagegen eval`'s machinery: grammar prompts, scoring through the oracle, the report files."""
import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from PIL import Image

from imagegen.data import shapes
from imagegen.evaluation.adherence import evaluate, grammar_prompts, write_report


@dataclass
class Result:
    images: list
    records: list


class RenderingPipe:
    """Stands in for a perfect model: draws exactly what the prompt states (optionally with one attribute wrong).
    Takes a prompt or a list of them (each with its own seed), as the pipeline does."""

    def __init__(self, wrong_shape=False):
        self.wrong_shape = wrong_shape
        self.calls = []

    def __call__(self, prompt, num_images, seed, **call):
        self.calls.append({"prompts": [prompt] if isinstance(prompt, str) else list(prompt), **call})
        prompts, seeds = ([prompt], [seed]) if isinstance(prompt, str) else (prompt, seed)
        images, records = [], []
        for text, first in zip(prompts, seeds):
            stated = shapes.parse_prompt(text)
            if self.wrong_shape:
                stated["shape"] = shapes.SHAPES[(shapes.SHAPES.index(stated["shape"]) + 1) % len(shapes.SHAPES)]
            for i in range(num_images):
                rng = np.random.default_rng(first + i)
                attrs = shapes.sample_attributes(rng, fixed=stated)
                images.append(Image.fromarray(shapes.render(attrs, rng)))
                records.append(SimpleNamespace(seed=first + i, prior_seed=first + i))
        return Result(images, records)


def test_grammar_prompts_are_fixed_by_the_seed_and_parse_back():
    prompts = grammar_prompts(50, seed=3)
    assert prompts == grammar_prompts(50, seed=3) and prompts != grammar_prompts(50, seed=4)
    for prompt, stated in prompts:
        assert shapes.parse_prompt(prompt) == stated
    lengths = {len(stated) for _, stated in prompts}
    assert min(lengths) < max(lengths)  # optional parts really are optional


def test_a_model_that_draws_the_prompt_scores_full_marks(tmp_path):
    report, images = evaluate(RenderingPipe(), grammar_prompts(40, seed=0), seeds_per_prompt=2, base_seed=0,
                              progress=False)
    assert report.pairs == 80 and report.all_correct == 1.0
    assert set(report.accuracy) >= {"shape", "colour"} and all(v == 1.0 for v in report.accuracy.values())
    json_path, grid_path = write_report(tmp_path, report, images)
    saved = json.loads(json_path.read_text())
    assert saved["all_attributes"] == 1.0 and len(saved["examples"]) == 80
    assert Image.open(grid_path).size[0] > 64
    again, _ = write_report(tmp_path, report, images)
    assert again.name == "adherence-2.json" and json_path.read_text() == json.dumps(saved, indent=1)


def test_a_wrong_shape_is_caught_and_marked_red():
    report, images = evaluate(RenderingPipe(wrong_shape=True), grammar_prompts(20, seed=1), seeds_per_prompt=1,
                              base_seed=0, progress=False)
    assert report.accuracy["shape"] <= 0.05 and report.all_correct <= 0.05
    assert report.accuracy["colour"] >= 0.95
    from imagegen.evaluation.adherence import FAIL_COLOUR, failure_grid

    grid = failure_grid(images, report.examples)
    assert grid.getpixel((0, 0)) == FAIL_COLOUR


def test_heart_and_outline_prompts_are_scored_on_the_new_concept():
    from imagegen.commands.eval import PROMPT_KINDS

    hearts = grammar_prompts(20, seed=2, **PROMPT_KINDS["heart"])
    outlines = grammar_prompts(20, seed=2, **PROMPT_KINDS["outline"])
    assert all(stated["shape"] == "heart" and " heart" in prompt for prompt, stated in hearts)
    assert all(stated["style"] == "outline" and "outlined" in prompt for prompt, stated in outlines)
    report, _ = evaluate(RenderingPipe(), outlines, seeds_per_prompt=1, base_seed=0, progress=False)
    assert report.accuracy["style"] == 1.0 and report.accuracy["shape"] >= 0.95
    filled = [(prompt.replace("outlined ", ""), {k: v for k, v in stated.items() if k != "style"})
              for prompt, stated in outlines]
    drawn_filled, _ = evaluate(RenderingPipe(), filled, seeds_per_prompt=1, base_seed=0, progress=False)
    assert drawn_filled.all_correct == 1.0
    # Filled shapes where outlines were asked for fail the style check: it can fail.
    asked_outline = [(prompt, {**stated, "style": "outline"}) for prompt, stated in filled]
    report, _ = evaluate(RenderingPipe(), asked_outline, seeds_per_prompt=1, base_seed=0, progress=False)
    assert report.accuracy["style"] == 0.0


def test_adapters_asked_for_reach_every_generation():
    from imagegen.lora.requests import parse_spec

    pipe, loras = RenderingPipe(), [parse_spec("heart:0.8")]
    evaluate(pipe, grammar_prompts(30, seed=0), seeds_per_prompt=3, base_seed=0, loras=loras, progress=False)
    assert [len(call["prompts"]) for call in pipe.calls] == [21, 9]  # whole prompts, up to 64 images a call
    assert all(call["loras"] == loras for call in pipe.calls)


def test_batched_prompts_keep_the_seeds_of_one_call_per_prompt():
    prompts = grammar_prompts(25, seed=5)
    report, _ = evaluate(RenderingPipe(), prompts, seeds_per_prompt=4, base_seed=10, progress=False)
    assert [e["seed"] for e in report.examples] == [10 + j * 4 + k for j in range(25) for k in range(4)]
    assert [e["prompt"] for e in report.examples] == [prompt for prompt, _ in prompts for _ in range(4)]


def test_the_report_gives_the_scores_without_the_iou_threshold_too():
    report, _ = evaluate(RenderingPipe(), grammar_prompts(20, seed=1), seeds_per_prompt=1, base_seed=0,
                         progress=False, min_iou=1.5)  # above any IoU: every image reads as no shape
    assert report.accuracy["shape"] == 0.0 and report.no_shape == 1.0 and report.all_correct == 0.0
    assert report.without_min_iou["accuracy"]["shape"] == 1.0 and report.without_min_iou["all_attributes"] == 1.0
    assert report.accuracy["colour"] == 1.0  # a shapeless drawing still has its colour
    assert all(e["best_fit"] == e["stated"]["shape"] and 0.8 < e["iou"] <= 1 for e in report.examples)


def test_short_prompts_are_every_colour_with_every_shape():
    from imagegen.evaluation.adherence import short_prompts

    prompts = short_prompts(40, seed=0)
    assert len({prompt for prompt, _ in prompts}) == 40 and short_prompts(40, seed=0) == prompts
    assert all(set(stated) == {"shape", "colour"} and shapes.parse_prompt(prompt) == stated
               for prompt, stated in prompts)
    assert [p for p, _ in short_prompts(10, seed=0)] == [p for p, _ in prompts[:10]]


def test_labelled_folders_hold_each_render_under_its_class(tmp_path):
    from imagegen.evaluation import oracle
    from imagegen.evaluation.labelled import write_labelled_folders

    folder = write_labelled_folders(tmp_path / "by-position", 30, seed=9, attribute="position")
    files = sorted(folder.rglob("*.png"))
    assert len(files) == 30
    for path in files:
        assert oracle.read_image(Image.open(path)).position == path.parent.name.replace("_", " ")
    import pytest

    with pytest.raises(ValueError, match="not empty"):
        write_labelled_folders(folder, 5, seed=9, attribute="position")
