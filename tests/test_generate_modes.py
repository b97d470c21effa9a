"""`imagegen generate`: --prompts-file in batches, --from-png again (bit-exact) and with overrides."""
import json

import numpy as np
from PIL import Image

from imagegen.png import read_record
from test_cli import FAST, run

PROMPTS = ["a red circle", "a blue square", "a green star", "a yellow triangle", "a white cross"]


def pixels(path):
    return np.asarray(Image.open(path)).astype(np.int16)


def test_prompts_file_in_batches_equals_one_call_per_prompt(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    common = ["--prompts-file", prompts, "--seed", "3", "-n", "2", "--json", "--model", tiny_model_dir, *FAST]
    code, batched, err = run(capsys, *common, "--batch-size", "4", "--out", tmp_path / "batched")
    assert code == 0, err
    code, single, err = run(capsys, *common, "--batch-size", "1", "--out", tmp_path / "single")
    assert code == 0, err
    batched, single = ([json.loads(line) for line in out.splitlines()] for out in (batched, single))
    assert [r["prompt"] for r in batched] == [p for p in PROMPTS for _ in range(2)]
    assert [r["seed"] for r in batched] == [3, 4] * len(PROMPTS) == [r["seed"] for r in single]
    assert [r["path"].rsplit("/", 1)[1] for r in batched] == [r["path"].rsplit("/", 1)[1] for r in single]
    assert {r["batch_size"] for r in batched} == {4, 2} and {r["batch_size"] for r in single} == {2}
    assert max(np.abs(pixels(a["path"]) - pixels(b["path"])).max() for a, b in zip(batched, single)) <= 1
    # An image of a mixed batch, made again from its PNG alone, is bit-exact.
    third = batched[5]
    code, again, err = run(capsys, "--from-png", third["path"], "--out", tmp_path / "again", "--json")
    assert code == 0, err
    assert np.array_equal(pixels(json.loads(again)["path"]), pixels(third["path"]))


def test_from_png_with_overrides_records_them(tiny_model_dir, tmp_path, capsys):
    code, first, err = run(capsys, "a red circle", "-n", "2", "--seed", "5", "--json", "--model", tiny_model_dir,
                           "--out", tmp_path / "a", *FAST)
    assert code == 0, err
    second = json.loads(first.splitlines()[1])
    code, changed, err = run(capsys, "--from-png", second["path"], "--steps", "4", "--out", tmp_path / "b", "--json")
    assert code == 0, err
    changed = json.loads(changed)
    assert changed["decoder"]["steps"] == 4 and changed["seed"] == second["seed"] == 6
    assert changed["prompt"] == "a red circle" and changed["batch_size"] == 1
    assert not np.array_equal(pixels(changed["path"]), pixels(second["path"]))
    record = read_record(changed["path"])
    assert record.decoder.steps == 4 and record.prior == read_record(second["path"]).prior
    code, reseeded, err = run(capsys, "--from-png", second["path"], "--seed", "40", "--out", tmp_path / "c", "--json")
    assert code == 0, err
    assert json.loads(reseeded)["seed"] == json.loads(reseeded)["prior_seed"] == 40


def test_from_png_refuses_n_and_rerank(tiny_model_dir, tmp_path, capsys):
    code, first, _ = run(capsys, "a red circle", "--seed", "5", "--model", tiny_model_dir, "--out", tmp_path / "a",
                         *FAST)
    code, out, err = run(capsys, "--from-png", first.strip(), "-n", "3", "--out", tmp_path / "b")
    assert code == 2 and "-n and --rerank do not apply" in err and not (tmp_path / "b").exists()
