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
EXAMPLES = {"heart": "heart"}  # adapter -> its trigger word (outline: not trained yet)
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
