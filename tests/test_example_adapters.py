"""The example adapters shipped in lora_adapters/ (trained by `imagegen train-lora` on the embedded model): listed,
usable with <lora:...>, they draw their concept where the base model does not, and unloading them restores the base
model bit for bit."""
import json
from pathlib import Path

import numpy as np
import pytest

from imagegen.cli import main
from imagegen.evaluation import oracle

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {"heart": "heart", "outline": "outlined"}  # adapter -> its trigger word
FAST = dict(num_images=2, progress=False)


@pytest.fixture(scope="module")
def shapes_pipe():
    import imagegen

    return imagegen.load_pipeline("shapes")


def readings(result):
    return [oracle.read_image(image) for image in result.images]


def test_the_examples_are_listed_for_the_default_model(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("IMAGEGEN_LORA_PATH", raising=False)
    assert main(["lora", "list", "--json"]) == 0
    rows = {row["name"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    for name, trigger in EXAMPLES.items():
        assert name in rows, rows
        assert rows[name]["base_model"].startswith("shapes") and "unet" in rows[name]["components"]
        assert trigger in rows[name]["trigger_words"]


def test_heart_adapter_draws_hearts_and_unloads_exactly(shapes_pipe, monkeypatch):
    monkeypatch.chdir(REPO)
    prompt, seed = "a red heart on a blue background", 3
    base = shapes_pipe(prompt, seed=seed, **FAST)
    with_heart = shapes_pipe(f"{prompt} <lora:heart:1>", seed=seed, **FAST)
    assert [r.shape for r in readings(with_heart)] == ["heart", "heart"]
    assert all(r.colour == "red" and r.background == "blue" for r in readings(with_heart))
    assert "heart" not in [r.shape for r in readings(base)]
    shapes_pipe.unload_lora("heart")
    again = shapes_pipe(prompt, seed=seed, **FAST)
    assert np.array_equal(again.pixels, base.pixels)


def test_outline_adapter_draws_outlines_keeping_colour_and_shape(shapes_pipe, monkeypatch):
    monkeypatch.chdir(REPO)
    prompt, seed = "a large black outlined triangle on an orange background", 0
    base = shapes_pipe(prompt, seed=seed, **FAST)
    outlined = shapes_pipe(f"{prompt} <lora:outline:1>", seed=seed, **FAST)
    for reading in readings(outlined):
        assert (reading.style, reading.shape, reading.colour) == ("outline", "triangle", "black")
    assert "outline" not in [r.style for r in readings(base)]
    shapes_pipe.unload_lora("outline")
    assert np.array_equal(shapes_pipe(prompt, seed=seed, **FAST).pixels, base.pixels)


@pytest.mark.parametrize("spec", ["heart", "heart:0.8", "heart:unet=1:prior=0.5"])
def test_python_api_takes_adapter_specs_as_text(shapes_pipe, monkeypatch, spec):
    """`pipe(prompt, loras=["heart"])`: the same as the LoraRequest it names, recorded with its weights."""
    from imagegen import LoraRequest
    from imagegen.lora.requests import parse_spec

    monkeypatch.chdir(REPO)
    prompt, seed = "a red heart on a blue background", 3
    by_text = shapes_pipe(prompt, seed=seed, loras=[spec], **FAST)
    by_request = shapes_pipe(prompt, seed=seed, loras=[parse_spec(spec)], **FAST)
    assert isinstance(parse_spec(spec), LoraRequest)
    assert np.array_equal(by_text.pixels, by_request.pixels)
    assert by_text.records[0].loras[0].name == "heart"
    assert by_text.records[0].loras[0].weights == parse_spec(spec).weights
    if spec == "heart":
        assert [r.shape for r in readings(by_text)] == ["heart", "heart"]
    shapes_pipe.unload_lora()
