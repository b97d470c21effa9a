"""The `imagegen` command: PNG metadata an AUTOMATIC1111 parser reads, --from-png, --json, bad input."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imagegen.cli import main

# AUTOMATIC1111's infotext parser (modules/infotext_utils.py, parse_generation_parameters), reduced to the fields
# read here: the reference for what A1111 and civitai read back from our `parameters` chunk.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_SIZE = re.compile(r"^(\d+)x(\d+)$")


def a1111_parse(text: str) -> dict:
    *lines, last = text.strip().split("\n")
    if len(RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[16:].strip()
        (negative if in_negative else prompt).append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in RE_PARAM.findall(last):
        if value[:1] == '"' and value[-1:] == '"':
            value = json.loads(value)
        size = RE_SIZE.match(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = size.groups()
        else:
            result[key] = value
    return result


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


FAST = ["--width", "32", "--height", "32", "--steps", "3", "--prior-steps", "3"]


def test_json_output_a1111_metadata_and_from_png_bit_exact(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "a red circle", "-n", "2", "--seed", "7", "--json", "--model", tiny_model_dir,
                            "--negative", "blurry, dark", "--out", out, *FAST)
    assert code == 0, err
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [r["seed"] for r in records] == [7, 8] and [r["prior_seed"] for r in records] == [7, 8]
    assert [os.path.basename(r["path"]) for r in records] == ["00001-7.png", "00002-8.png"]
    for record in records:
        with Image.open(record["path"]) as image:
            info = a1111_parse(image.text["parameters"])
            stored = json.loads(image.text["imagegen"])
        assert info["Prompt"] == "a red circle" and info["Negative prompt"] == "blurry, dark"
        assert info["Steps"] == "3" and info["Seed"] == str(record["seed"])
        assert (info["Size-1"], info["Size-2"]) == ("32", "32")
        assert info["Prior steps"] == "3" and info["Prior seed"] == str(record["prior_seed"])
        assert stored["seed"] == record["seed"] and stored["negative_prompt"] == "blurry, dark"

        code, again, err = run(capsys, "--from-png", record["path"], "--out", out, "--json")
        assert code == 0, err
        remade = json.loads(again)
        assert remade["seed"] == record["seed"] and remade["path"] != record["path"]
        assert np.array_equal(np.asarray(Image.open(remade["path"])), np.asarray(Image.open(record["path"])))


def test_numbered_names_never_overwrite(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "00007-1.png").write_bytes(b"keep me")
    code, stdout, _ = run(capsys, "a red circle", "--seed", "1", "--model", tiny_model_dir, "--out", out, *FAST)
    assert code == 0 and stdout.strip().endswith("00008-1.png")
    assert (out / "00007-1.png").read_bytes() == b"keep me"
    assert not [p for p in out.iterdir() if p.name.startswith(".partial")]


def test_prompts_file_makes_every_prompt_in_one_process(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\n")
    code, stdout, _ = run(capsys, "--prompts-file", prompts, "--seed", "3", "--json", "--model", tiny_model_dir,
                          "--out", tmp_path / "out", *FAST)
    assert code == 0
    assert [json.loads(line)["prompt"] for line in stdout.splitlines()] == ["a red circle", "a blue square"]


def test_mix_and_variations_from_the_command_line(tiny_model_dir, tmp_path, capsys):
    picture = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (0, 0, 255)).save(picture)
    code, stdout, _ = run(capsys, "--mix", "a red circle:0.7", "--mix", "a blue square:0.3", "--seed", "1", "--json",
                          "--model", tiny_model_dir, "--out", tmp_path / "out", *FAST)
    assert code == 0
    record = json.loads(stdout)
    assert record["mix"] == [{"text": "a red circle", "weight": 0.7}, {"text": "a blue square", "weight": 0.3}]
    code, stdout, _ = run(capsys, "--variations-of", picture, "--seed", "1", "--json", "--model", tiny_model_dir,
                          "--out", tmp_path / "out", *FAST)
    assert code == 0 and json.loads(stdout)["mix"] == [{"image": str(picture), "weight": 1.0}]


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "steps must be a whole number >= 1, got 0"),
    (["--guidance", "-2"], "guidance must be a finite number >= 0, got -2.0"),
    (["--width", "33"], "width must be a positive multiple of 2"),
    (["--height", "-64"], "height must be a positive multiple"),
    (["--scheduler", "plms"], "unknown scheduler 'plms'; choose one of"),
    (["--prior-scheduler", "euler"], "unknown prior scheduler 'euler'; choose one of: unclip, ddpm"),
    (["--device", "gpu"], "unknown device 'gpu'; use one of: cpu, cuda"),
    (["--dtype", "float8"], "unknown dtype 'float8'"),
    (["--seed", "4294967296"], "--seed must be a whole number from 0 to 4294967295"),
    (["--prior-seed", "-5"], "--prior-seed must be a whole number"),
    (["--attention", "flash"], "unknown attention 'flash'"),
    (["--attention", "xformers"], "attention 'xformers' needs a CUDA device"),
    (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["--mix", "x.png:0.5"], "cannot read image 'x.png'"),
    (["a red circle", "--mix", "a blue square"], "give one of PROMPT, --prompts-file, --mix, --variations-of, "
                                                 "--from-png; got PROMPT and --mix"),
    (["a red circle", "--batch-size", "4"], "--batch-size applies to --prompts-file only"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_model_dir, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    prompt = [] if args[0] == "--mix" or not args[0].startswith("-") else ["a red circle"]  # one input mode per case
    code, stdout, err = run(capsys, *prompt, "--model", tiny_model_dir, "--out", out, *FAST, *args)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--kind", "hexagon"], "unknown --kind 'hexagon'; expected one of base, heart, outline"),
    (["--prompts", "0"], "--prompts must be a whole number >= 1, got 0"),
    (["--lora", ":0.5"], "LoRA spec ':0.5' has no adapter name"),
])
def test_eval_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "eval"
    code, stdout, err = run(capsys, "eval", "--out", out, *args)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_bad_files_are_one_line_errors(tiny_model_dir, tmp_path, capsys):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["--from-png", plain], "holds no imagegen metadata"),
        (["--prompts-file", empty], "has no prompts"),
        (["--prompts-file", tmp_path / "missing.txt"], "cannot read prompts file"),
        (["a red circle", "--out", a_file / "sub"], "cannot be created"),
        (["a red circle", "--model", "nope"], "unknown model 'nope'"),
        (["   "], "no prompt given"),
    ]
    for args, message in cases:
        code, stdout, err = run(capsys, *args, *(["--model", tiny_model_dir] if "--model" not in args else []))
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, (args, err)


def test_help_and_models_do_not_import_torch():
    probe = ("import sys, contextlib, io\n"
             "from imagegen.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    try: main(['--help'])\n"
             "    except SystemExit: pass\n"
             "    main(['models'])\n"
             "    try: main(['generate', '--help'])\n"
             "    except SystemExit: pass\n"
             "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'xformers') if m in sys.modules]\n"
             "print(heavy)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_models_lists_presets(capsys):
    code, stdout, _ = run(capsys, "models", "--json")
    names = {json.loads(line)["name"] for line in stdout.splitlines()}
    assert code == 0 and {"shapes", "kandinsky-2-2"} <= names


def test_rerank_keeps_the_best_candidate_by_clip_score(tiny_model_dir, tmp_path, capsys, tiny_pipe):
    from imagegen.classify.run import best_by_clip_score

    code, stdout, err = run(capsys, "a red circle", "-n", "2", "--rerank", "3", "--seed", "5", "--json", "--model",
                            tiny_model_dir, "--out", tmp_path / "out", *FAST)
    assert code == 0, err
    records = [json.loads(line) for line in stdout.splitlines()]
    assert len(records) == 2
    for i, record in enumerate(records):
        rerank = record["rerank"]
        assert rerank["candidates"] == 3 and rerank["candidate_seeds"] == [5 + 3 * i + j for j in range(3)]
        assert rerank["chosen"] == max(range(3), key=rerank["clip_scores"].__getitem__)
        assert record["seed"] == rerank["candidate_seeds"][rerank["chosen"]]
        assert "CLIP score" in Image.open(record["path"]).text["parameters"]
    # The chosen image is made again bit-exactly, and a direct check of the scores agrees.
    code, again, _ = run(capsys, "--from-png", records[1]["path"], "--out", tmp_path / "out", "--json")
    assert code == 0
    assert np.array_equal(np.asarray(Image.open(json.loads(again)["path"])), np.asarray(Image.open(records[1]["path"])))
    # The recorded score is CLIPScore = 100 * max(cos, 0) in the pipeline's own CLIP space, checked by hand here.
    import torch

    saved = Image.open(records[0]["path"]).convert("RGB")
    with torch.no_grad():
        text = tiny_pipe.encode_text(["a red circle"])[0][0]
        picture = tiny_pipe.embed_image(saved)[0]
    by_hand = 100 * max(torch.nn.functional.cosine_similarity(text, picture, dim=0).item(), 0.0)
    assert abs(by_hand - records[0]["rerank"]["clip_scores"][records[0]["rerank"]["chosen"]]) < 1e-3
    assert best_by_clip_score(tiny_pipe, "a red circle", [saved])[1][0] == pytest.approx(by_hand, abs=1e-3)
