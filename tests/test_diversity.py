"""`imagegen eval --diversity`: entropy of the free attributes against the generator's own, and invisible shapes."""
import json
from dataclasses import dataclass, replace
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from imagegen.data import shapes
from imagegen.evaluation import diversity
from imagegen.evaluation.adherence import short_prompts


@dataclass
class Result:
    images: list
    records: list


class WorldPipe:
    """Draws the prompt as the generator would (every free attribute sampled from the seed), or - `collapse` - always
    the same size, position and background, or - `invisible` - the shape in its background's colour."""

    def __init__(self, collapse=False, invisible=False):
        self.collapse, self.invisible = collapse, invisible

    def __call__(self, prompt, num_images, seed, **call):
        images, records = [], []
        for text, first in zip(prompt, seed):
            stated = shapes.parse_prompt(text)
            for k in range(num_images):
                rng = np.random.default_rng(first + k)
                fixed = {"size": "medium", "position": "in the center", **stated} if self.collapse else stated
                attrs = shapes.sample_attributes(rng, fixed=fixed)
                if self.collapse and "background" not in stated:
                    attrs = replace(attrs, background="black" if attrs.colour != "black" else "white")
                if self.invisible:
                    attrs = replace(attrs, background=attrs.colour)
                images.append(Image.fromarray(shapes.render(attrs, rng)))
                records.append(SimpleNamespace(seed=first + k, prior_seed=first + k))
        return Result(images, records)


def test_plug_in_entropy_and_its_expectation():
    assert diversity.entropy([5, 5]) == pytest.approx(np.log(2)) and diversity.entropy([7, 0]) == 0.0
    uniform = [1 / 9] * 9
    assert diversity.expected_entropy(uniform, 1000) == pytest.approx(np.log(9), abs=0.01)
    assert 0.85 * np.log(9) < diversity.expected_entropy(uniform, 16) < 0.92 * np.log(9)  # few draws: biased low


def test_the_generator_distribution_respects_what_the_prompt_fixes():
    background = diversity.generator_distribution({"shape": "circle", "colour": "red"}, "background")
    assert "red" not in background and len(background) == 7
    assert all(abs(p - 1 / 7) < 0.02 for p in background.values())
    size = diversity.generator_distribution({"shape": "circle"}, "size")
    assert set(size) == set(shapes.SIZES) and all(abs(p - 1 / 3) < 0.02 for p in size.values())


def test_diversity_prompts_leave_each_attribute_free_about_half_the_time():
    prompts = diversity.diversity_prompts(200, seed=0)
    for name in diversity.FREE:
        assert 0.4 < np.mean([name not in stated for _, stated in prompts]) < 0.6
    assert prompts == diversity.diversity_prompts(200, seed=0)


def test_a_model_that_samples_like_the_data_scores_about_one(tmp_path):
    prompts = diversity.diversity_prompts(12, seed=3)
    report, images = diversity.evaluate(WorldPipe(), prompts, seeds_per_prompt=16, base_seed=0, progress=False)
    assert report.images == 192 and report.invisible == 0.0
    for name, stats in report.attributes.items():
        assert 0.85 < stats["normalized_entropy"] < 1.15, (name, stats)
        assert stats["pooled"] > 0.9
    json_path, grid_path = diversity.write_report(tmp_path, report, images)
    saved = json.loads(json_path.read_text())
    assert set(saved["attributes"]) == set(report.attributes) and len(saved["prompts"]) == 12
    assert Image.open(grid_path).size[1] >= 12 * 68


def test_a_collapsed_model_scores_zero_on_what_it_never_varies():
    prompts = short_prompts(6, seed=0)
    report, _ = diversity.evaluate(WorldPipe(collapse=True), prompts, seeds_per_prompt=8, base_seed=0, progress=False)
    assert set(report.attributes) == {"background", "size", "position"}  # colour and shape are stated
    assert all(stats["normalized_entropy"] == 0.0 for stats in report.attributes.values())
    assert report.attributes["size"]["read"]["medium"] == 1.0


def test_shapes_in_their_background_colour_are_invisible():
    prompts = short_prompts(4, seed=1)
    report, images = diversity.evaluate(WorldPipe(invisible=True), prompts, seeds_per_prompt=4, base_seed=0,
                                        progress=False)
    assert report.invisible == 1.0
    from imagegen.grid import LABEL_WIDTH, PADDING

    grid = diversity.diversity_grid(images, report)
    assert grid.getpixel((LABEL_WIDTH + PADDING, PADDING)) == diversity.INVISIBLE_COLOUR  # the first tile's frame


def test_eval_diversity_on_the_default_model(tmp_path, capsys):
    """The command end to end on the shapes model: 2 prompts x 2 seeds."""
    from imagegen.cli import main

    code = main(["eval", "--diversity", "--prompts", "2", "--seeds", "2", "--out", str(tmp_path), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["images"] == 4 and summary["settings"]["kind"] == "base"
    assert (tmp_path / "diversity.json").exists() and (tmp_path / "diversity-grid.png").exists()
