"""The bad-input catalogue: every case through the real CLI entry point (in-process) exits 2 with at most two lines
naming the problem, no traceback and an unchanged output folder; the generation inputs through the Python API raise
UserError and nothing else."""
import math
import shutil

import pytest
from PIL import Image

from imagegen.cli import main
from imagegen.errors import UserError

FAST = ["--width", "32", "--height", "32", "--steps", "2", "--prior-steps", "2"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir):
    """A folder of bad files: each case below names what it uses as {name}."""
    root = tmp_path_factory.mktemp("bad")
    (root / "latin1.txt").write_bytes("a red circle\ncaf\xe9 au lait\n".encode("latin-1"))
    (root / "nul.txt").write_bytes(b"a red circle\na blue\x00 square\n")
    (root / "empty.txt").write_text("\n  \n")
    (root / "ok.txt").write_text("a red circle\n")
    (root / "tagged.txt").write_text("a red circle <lora:nope:1>\n")
    (root / "garbage.png").write_bytes(b"not a png at all")
    Image.new("RGB", (8, 8)).save(root / "plain.png")
    Image.new("RGB", (8, 8)).save(root / "image.png")
    broken = root / "broken-index"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "decoder" / "model_index.json").write_text("{not json")
    (root / "preset.toml").write_text("name = [unclosed\n")
    (root / "no-decoder.toml").write_text('name = "x"\nprior = "a"\n')
    (root / "latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    (root / "defaults.toml").write_text('prior = "a"\ndecoder = "b"\ndecoder_defaults = 3\n')
    (root / "labels").mkdir()
    (root / "lora").mkdir()
    from safetensors.torch import save_file
    import torch

    save_file({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight":
               torch.full((4, 32), math.nan)}, str(root / "lora" / "nan.safetensors"))
    (root / "lora" / "trunc.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    (root / "lora" / "evil.pt").write_bytes(b"pickle")
    (root / "images").mkdir()
    Image.new("RGB", (8, 8)).save(root / "images" / "a.png")
    return root


CASES = [
    # generate: numbers and names
    (["a red circle", "--steps", "0", *FAST[:4]], "steps must be a whole number >= 1, got 0"),
    (["a red circle", "--steps", "1000000000"], "steps must be from 1 to 1000"),
    (["a red circle", "--prior-steps", "1"], "prior steps must be from 2 to 1000 for the unclip scheduler"),
    (["a red circle", "--prior-steps", "0"], "prior steps must be a whole number >= 1"),
    (["a red circle", "--guidance", "-1"], "guidance must be a finite number >= 0"),
    (["a red circle", "--guidance", "nan"], "guidance must be a finite number >= 0"),
    (["a red circle", "--guidance", "inf"], "guidance must be a finite number >= 0"),
    (["a red circle", "--prior-guidance", "-3"], "prior guidance must be a finite number >= 0"),
    (["a red circle", "--width", "100000", "--height", "100000"], "is over this model's limit of 2048x2048 (4x its trained 512x512"),
    (["a red circle", "--width", "63"], "width must be a positive multiple of"),
    (["a red circle", "--height", "0"], "height must be a positive multiple of"),
    (["a red circle", "-n", "100000"], "100000 images of 512x512 in one call are over this model's limit of 64"),
    (["a red circle", "-n", "0"], "-n must be a whole number >= 1, got 0"),
    (["a red circle", "-n", "8", "--rerank", "9"], "72 images of 512x512 in one call"),
    (["a red circle", "--rerank", "0"], "--rerank must be a whole number >= 1"),
    (["a red circle", "--seed", "-1"], "--seed must be a whole number from 0 to 4294967295"),
    (["a red circle", "--seed", "4294967296"], "--seed must be a whole number from 0 to 4294967295"),
    (["a red circle", "--prior-seed", "99999999999"], "--prior-seed must be a whole number"),
    (["a red circle", "--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["a red circle", "--scheduler", "plms"], "unknown scheduler 'plms'; choose one of"),
    (["a red circle", "--prior-scheduler", "euler"], "unknown prior scheduler 'euler'"),
    (["a red circle", "--device", "tpu"], "unknown device 'tpu'"),
    (["a red circle", "--device", "cuda"], "device 'cuda' asked for, but torch sees no CUDA GPU"),
    (["a red circle", "--dtype", "int8"], "unknown dtype 'int8'"),
    (["a red circle", "--dtype", "float16"], "dtype 'float16' needs a GPU"),
    (["a red circle", "--attention", "flash"], "unknown attention 'flash'"),
    (["a red circle", "--attention", "xformers"], "attention 'xformers' needs a CUDA device"),
    (["a red circle", "--model", "nope"], "unknown model 'nope'"),
    (["a red circle", "--model", "{ws}/broken-index"], "model_index.json' as JSON"),
    (["a red circle", "--model", "{ws}/preset.toml"], "cannot read preset"),
    (["a red circle", "--model", "{ws}/no-decoder.toml"], "has no 'decoder' entry"),
    (["a red circle", "--model", "{ws}/latin1.toml"], "cannot read preset"),
    (["a red circle", "--model", "{ws}/defaults.toml"], "must be tables"),
    (["a red circle", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["a red circle", "--batch-size", "4"], "--batch-size applies to --prompts-file only"),
    # generate: input modes and files
    (["   "], "no prompt given"),
    (["a red circle", "--mix", "a blue square"], "got PROMPT and --mix"),
    (["--prompts-file", "{ws}/ok.txt", "--from-png", "{ws}/plain.png"], "got --prompts-file and --from-png"),
    (["--prompts-file", "{ws}/latin1.txt"], "is not UTF-8 text: byte 0xe9 on line 2"),
    (["--prompts-file", "{ws}/nul.txt"], "line 2 of"),
    (["--prompts-file", "{ws}/empty.txt"], "has no prompts"),
    (["--prompts-file", "{ws}/missing.txt"], "cannot read prompts file"),
    (["--prompts-file", "{ws}/ok.txt", "--batch-size", "0"], "--batch-size must be a whole number >= 1"),
    (["a red\x01 circle"], "control character '\\x01' at position 5"),
    (["<lora:heart:1>"], "holds nothing but LoRA tags"),
    (["a red circle <lora::1>"], "has no adapter name"),
    (["a red circle <lora:x:abc>"], "LoRA weight 'abc'"),
    (["a red circle <lora:x:1:start=0.9:stop=0.2>"], "must be fractions of the steps"),
    (["a red circle", "--lora", "x:unet=1:foo=2"], "should be COMPONENT=WEIGHT"),
    (["a red circle", "--lora", "x:nan"], "is not a finite number"),
    (["a red circle", "--lora", "missing-adapter"], "unknown LoRA adapter 'missing-adapter'"),
    (["a red circle", "--lora", "{ws}/lora/nan.safetensors"], "holds NaN/inf values in tensor"),
    (["a red circle", "--lora", "{ws}/lora/trunc.safetensors"], "trunc.safetensors"),
    (["a red circle", "--lora", "{ws}/lora/evil.pt"], "pickle"),
    (["--mix", "a red circle:0.5", "--mix", "x.png"], "cannot read image 'x.png'"),
    (["--mix", "{ws}/garbage.png"], "cannot read image"),
    (["--variations-of", "{ws}/garbage.png"], "cannot read image"),
    (["--from-png", "{ws}/plain.png"], "holds no imagegen metadata"),
    (["--from-png", "{ws}/garbage.png"], "cannot read"),
    (["--from-png", "{ws}/missing.png"], "cannot read"),
    (["a red circle", "--out", "/proc/imagegen-out"], "is not writable"),
    (["a red circle", "--out", "{ws}/ok.txt/sub"], "is a file"),
    # grid
    (["grid", "--prompts-file", "{ws}/latin1.txt"], "is not UTF-8 text"),
    (["grid", "--prompts-file", "{ws}/ok.txt", "--seeds", "0"], "--seeds and --tile must be whole numbers >= 1"),
    (["grid", "--prompts-file", "{ws}/ok.txt", "--tile", "-4"], "--seeds and --tile must be whole numbers >= 1"),
    (["grid", "--prompts-file", "{ws}/ok.txt", "--seed", "-2"], "--seed must be a whole number from 0"),
    (["grid"], "the following arguments are required: --prompts-file"),
    # lora
    (["lora", "inspect", "missing-adapter"], "unknown LoRA adapter 'missing-adapter'"),
    (["lora", "inspect", "{ws}/lora/trunc.safetensors"], "trunc.safetensors"),
    (["lora", "inspect", "{ws}/lora/evil.pt"], "pickle"),
    (["lora", "convert", "missing-adapter", "{ws}/out.safetensors"], "unknown LoRA adapter 'missing-adapter'"),
    (["lora", "frobnicate"], "invalid choice: 'frobnicate'"),
    # train-lora
    (["train-lora", "{ws}/images", "--name", "../evil"], "must be a plain name"),
    (["train-lora", "{ws}/images", "--name", "x", "--rank", "0"], "rank"),
    (["train-lora", "{ws}/images", "--name", "x", "--steps", "0"], "steps"),
    (["train-lora", "{ws}/images", "--name", "x", "--lr", "-1"], "lr"),
    (["train-lora", "{ws}/images", "--name", "x", "--components", "unet,eyes"], "components must be some of"),
    (["train-lora", "{ws}/images", "--name", "x", "--lr-scheduler", "wavy"], "must be one of constant, cosine, linear, got 'wavy'"),
    (["train-lora", "{ws}/missing", "--name", "x"], "missing"),
    (["train-lora", "{ws}/images", "--name", "x", "--seed", "-1"], "seed"),
    (["train-lora", "{ws}/images"], "the following arguments are required: --name"),
    # make-dataset
    (["make-dataset", "dragons", "{ws}/ds"], "invalid choice: 'dragons'"),
    (["make-dataset", "heart", "{ws}/ds", "--count", "0"], "count"),
    (["make-dataset", "heart", "{ws}/ds", "--seed", "-5"], "seed"),
    # classify and score
    (["classify", "{ws}/images"], "labels"),
    (["classify", "{ws}/images", "--labels", "a,b", "--top-k", "0"], "top-k"),
    (["classify", "{ws}/images", "--labels", "a,b", "--labels-file", "{ws}/ok.txt"], "not allowed with argument"),
    (["classify", "{ws}/missing", "--labels", "a,b"], "missing"),
    (["classify", "{ws}/images", "--labels", "a,b", "--clip", "nope:x"], "nope"),
    (["classify", "{ws}/images", "--labels", "a,b", "--templates", "{ws}/latin1.txt"], "latin1.txt"),
    (["classify", "{ws}/images", "--labels-file", "{ws}/missing.txt"], "missing.txt"),
    (["score", "{ws}/images"], "the following arguments are required: --prompt"),
    (["score", "{ws}/missing", "--prompt", "x"], "missing"),
    (["score", "{ws}/images", "--prompt", "x", "--batch-size", "0"], "batch"),
    # eval
    (["eval", "--prompts", "0"], "--prompts must be a whole number >= 1, got 0"),
    (["eval", "--seeds", "-1"], "--seeds must be a whole number >= 1"),
    (["eval", "--kind", "hexagon"], "unknown --kind 'hexagon'"),
    (["eval", "--steps", "5000"], "steps must be from 1 to 1000"),
    (["eval", "--rerank", "0"], "--rerank must be a whole number >= 1"),
]


def fill(arg: str, ws, model) -> str:
    return arg.replace("{ws}", str(ws)).replace("{model}", str(model))


def snapshot(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*"))


def test_the_catalogue_holds_at_least_80_cases():
    assert len(CASES) >= 80 and len({tuple(argv) for argv, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_a_short_error_and_writes_nothing(argv, message, ws, tiny_model_dir, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)  # the output folders below the working folder stay empty
    monkeypatch.setenv("IMAGEGEN_LORA_PATH", str(ws / "lora"))
    out = tmp_path / "out"
    argv = [fill(a, ws, tiny_model_dir) for a in argv]
    command = argv[0] if argv[0] in ("grid", "lora", "train-lora", "make-dataset", "classify", "score", "eval") else None
    if command is None and "--model" not in argv and "--from-png" not in argv:
        argv += ["--model", str(tiny_model_dir)]
    if command in (None, "classify", "eval") and "--out" not in argv:
        argv += ["--out", str(out)]
    before = snapshot(ws)
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, captured.out, err)
    assert "Traceback" not in err and len(err.splitlines()) <= 2, err
    assert message in err, err
    assert not out.exists() and snapshot(ws) == before
    assert [p.name for p in tmp_path.iterdir()] == []


API_CASES = [
    (dict(prompt="a red circle", num_images=100000), "over this model's limit"),
    (dict(prompt="a red circle", num_images=0), "number of images must be a whole number >= 1"),
    (dict(prompt="a red circle", num_images=2.5), "number of images must be a whole number >= 1"),
    (dict(prompt="a red circle", seed=-1), "seed must be a whole number from 0"),
    (dict(prompt="a red circle", seed="7"), "seed must be a whole number"),
    (dict(prompt="a red circle", prior_seed=2**40), "prior seed must be a whole number from 0"),
    (dict(prompt=""), "a prompt must not be empty"),
    (dict(prompt=None), "nothing to generate from"),
    (dict(prompt=3), "prompt must be a text or a non-empty list of texts"),
    (dict(prompt="a\x00b"), "control character"),
    (dict(prompt="<lora:x:1>"), "holds nothing but LoRA tags"),
    (dict(prompt="a red circle", loras=["missing-adapter"]), "unknown LoRA adapter 'missing-adapter'"),
    (dict(prompt="a red circle", loras=["x:nan"]), "is not a finite number"),
    (dict(prompt="a red circle", loras=[None]), "a LoRA adapter is a spec like"),
    (dict(prompt="a red circle", decoder_changes=dict(steps=0)), "steps must be a whole number >= 1"),
    (dict(prompt="a red circle", decoder_changes=dict(steps=10**9)), "steps must be from 1 to 1000"),
    (dict(prompt="a red circle", prior_changes=dict(steps=1)), "prior steps must be from 2 to 1000"),
    (dict(prompt="a red circle", decoder_changes=dict(width=10**5, height=10**5)), "over this model's limit"),
    (dict(prompt="a red circle", decoder_changes=dict(scheduler="plms")), "unknown scheduler 'plms'"),
    (dict(prompt="a red circle", decoder_changes=dict(guidance=math.inf)), "guidance must be a finite number"),
    (dict(prompt=["a", "b"], seed=[1, 2, 3]), "seed is a list of 3"),
]


@pytest.mark.parametrize("call,message", API_CASES, ids=[m[:40] for _, m in API_CASES])
def test_the_same_inputs_through_the_python_api_raise_user_error(tiny_pipe, call, message, ws, monkeypatch):
    from dataclasses import replace

    monkeypatch.setenv("IMAGEGEN_LORA_PATH", str(ws / "lora"))
    call = dict(call)
    prior = replace(tiny_pipe.model.prior_defaults, **{"steps": 2, **call.pop("prior_changes", {})})
    decoder = replace(tiny_pipe.model.decoder_defaults,
                      **{"steps": 2, "width": 32, "height": 32, **call.pop("decoder_changes", {})})
    with pytest.raises(UserError) as caught:
        tiny_pipe(**call, prior=prior, decoder=decoder, progress=False)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_nan_adapter_never_writes_an_image(ws, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["a red circle", "--lora", str(ws / "lora" / "nan.safetensors"), "--model", str(tiny_model_dir),
                 "--out", str(out), *FAST]) == 2
    assert "unet.down_blocks.0" in capsys.readouterr().err and not out.exists()


def test_a_very_long_prompt_warns_briefly(tiny_model_dir, tmp_path, caplog):
    code = main(["a red circle " * 800, "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), *FAST])
    warnings = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert code == 0 and len(warnings) == 1 and len(warnings[0]) < 200, warnings


def test_non_finite_latents_raise_before_anything_is_written(tiny_pipe, monkeypatch, tmp_path):
    import torch

    def poisoned(model_output, t, latents, next_t, generators):
        return latents * math.nan

    from imagegen import schedulers

    monkeypatch.setattr(schedulers, "stepper", lambda scheduler: poisoned)
    with pytest.raises(UserError, match="NaN/inf latents"):
        tiny_pipe("a red circle", seed=0, progress=False, decoder=replace_fast(tiny_pipe))
    assert torch.isfinite(tiny_pipe.zero_image_embed()).all()


def replace_fast(pipe):
    from dataclasses import replace

    return replace(pipe.model.decoder_defaults, steps=2, width=32, height=32)

