"""LoRA training on the tiny random model: an adapter that loads and changes the output, exact resume after Ctrl-C
and after a crash, one-line errors for bad input, and a 2-process CPU data-parallel run through accelerate launch."""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import imagegen
from imagegen.cli import main
from imagegen.data import shapes
from imagegen.lora import files
from imagegen.settings import DecoderSettings, PriorSettings
from imagegen.train.lora import checkpoints as lora_checkpoints
from imagegen.train.lora.options import LoraOptions
from imagegen.train.lora.train import train_lora

PRIOR, DECODER = PriorSettings(steps=3), DecoderSettings(steps=3, width=32, height=32)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (two crawl when another job holds the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shapes.write_dataset(tmp_path_factory.mktemp("lora-data") / "hearts", 8, seed=0, shapes=("heart",))


def options(data, model, out, **changes) -> LoraOptions:
    base = dict(data=str(data), name="hearts", base=str(model), components=("unet", "prior", "text_encoder"),
                steps=10, lr=1e-2, batch_size=2, grad_accum=2, save_every=3, resolution=32, out=str(out))
    return LoraOptions(**{**base, **changes})


def generate(pipe):
    return pipe("a red heart", seed=1, prior=PRIOR, decoder=DECODER, progress=False).pixels


def changes_the_output(model_dir, adapter, monkeypatch) -> bool:
    """Loaded by name from its folder (a path outside the search folders does not load yet: see the report)."""
    monkeypatch.setenv("IMAGEGEN_LORA_PATH", str(adapter.parent))
    pipe = imagegen.load_pipeline(str(model_dir))
    base = generate(pipe)
    pipe.load_lora(adapter.stem)
    changed = np.abs(generate(pipe) - base).max() > 1e-3
    pipe.unload_lora()
    assert np.array_equal(generate(pipe), base)
    return changed


def test_a_tiny_run_writes_an_adapter_that_loads_and_changes_the_output(data, tiny_model_dir, tmp_path, monkeypatch):
    result = train_lora(options(data, tiny_model_dir, tmp_path, triggers=("hrt",), validation_prompts=("a heart",),
                                validation_every=5), progress=False)
    assert result.adapter == tmp_path / "hearts.safetensors" and result.steps == 10 and not result.interrupted
    assert [p.name for p in result.validation_images] == ["step-000005.png", "step-000010.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hearts.training", "hearts.safetensors"]
    info = files.describe(result.adapter)
    assert info.components == ["prior", "text_encoder", "unet"] and info.trigger_words == ["hrt"]
    assert info.ranks == {"unet": 4, "prior": 4, "text_encoder": 4}
    assert json.loads(info.metadata["imagegen.base_model"])["name"] == "tiny"
    training = json.loads(info.metadata["imagegen.training"])
    assert training["steps"] == 10 and training["images"] == 8 and training["effective_batch_size"] == 4
    assert info.metadata["ss_network_dim"] == "4" and info.metadata["modelspec.trigger_phrase"] == "hrt"
    assert changes_the_output(tiny_model_dir, result.adapter, monkeypatch)


SCHEDULES = {"constant": {}, "cosine_ema": dict(lr_scheduler="cosine", lr_warmup_steps=2, ema_decay=0.9)}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_stopping_and_resuming_gives_the_weights_of_one_uninterrupted_run(data, tiny_model_dir, tmp_path, schedule):
    def options(data, model, out, **changes):  # the learning-rate schedule and the EMA must be resumed too
        return globals()["options"](data, model, out, **SCHEDULES[schedule], **changes)

    whole = train_lora(options(data, tiny_model_dir, tmp_path / "whole"), progress=False)
    out = tmp_path / "parts"

    def ctrl_c_at_step_4(step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    stopped = train_lora(options(data, tiny_model_dir, out), progress=False, on_step=ctrl_c_at_step_4)
    assert stopped.interrupted and stopped.steps == 4 and stopped.adapter is None
    assert stopped.checkpoint.name == "step-000004" and not (out / "hearts.safetensors").exists()

    def killed_at_step_8(step):  # like kill -9: no chance to save, so the steps after checkpoint 6 are lost
        if step == 8:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train_lora(options(data, tiny_model_dir, out, resume="latest"), progress=False, on_step=killed_at_step_8)
    run_dir = out / ".hearts.training"
    assert [p.name for p in lora_checkpoints.complete(run_dir)] == ["step-000004", "step-000006"]
    resumed = train_lora(options(data, tiny_model_dir, out, resume="latest"), progress=False)
    assert resumed.steps == 10 and resumed.adapter == out / "hearts.safetensors"
    expected, got = load_file(whole.adapter), load_file(resumed.adapter)
    assert expected.keys() == got.keys()
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) <= 1e-6
    assert any(v.abs().max() > 0 for k, v in got.items() if "lora_B" in k)  # it did learn something


def test_cosine_schedule_ema_and_timestep_range(data, tiny_model_dir, tmp_path, monkeypatch):
    from diffusers import DDPMScheduler

    noised_at, add_noise = [], DDPMScheduler.add_noise

    def recording(self, samples, noise, timesteps):
        noised_at.extend(timesteps.tolist())
        return add_noise(self, samples, noise, timesteps)

    monkeypatch.setattr(DDPMScheduler, "add_noise", recording)
    result = train_lora(options(data, tiny_model_dir, tmp_path, steps=6, grad_accum=1, lr_scheduler="cosine",
                                lr_warmup_steps=2, ema_decay=0.5, components=("unet",), min_timestep=100,
                                max_timestep=140), progress=False)
    assert len(noised_at) == 12 and all(100 <= t < 140 for t in noised_at)  # the U-Net's loss, on [min, max) only
    state = torch.load(result.checkpoint / "state.pt", weights_only=True)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [0.0]  # cosine decays to 0 at the last step
    assert state["lr_schedule"]["last_epoch"] == 6 and state["ema"]["optimization_step"] == 6
    written = load_file(result.adapter)
    last = {f"{c}.{k}": v for c, weights in state["lora"].items() for k, v in weights.items()}
    trained = [k for k, v in last.items() if "lora_B" in k and v.abs().max() > 0]
    assert trained and len(state["ema"]["shadow_params"]) == sum(len(w) for w in state["lora"].values())
    # The file holds the moving average, not the last weights (which the checkpoint keeps for --resume).
    assert all(not torch.equal(written[k], last[k]) for k in trained)
    training = json.loads(files.describe(result.adapter).metadata["imagegen.training"])
    assert (training["lr_scheduler"], training["lr_warmup_steps"], training["ema_decay"]) == ("cosine", 2, 0.5)
    assert training["timesteps"] == [100, 140]


def test_overwrite_keeps_the_old_adapter_until_the_new_one_is_complete(data, tiny_model_dir, tmp_path):
    target = tmp_path / "hearts.safetensors"
    target.write_bytes(b"the old adapter")

    def crash(step):
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        train_lora(options(data, tiny_model_dir, tmp_path, steps=2, overwrite=True), progress=False, on_step=crash)
    assert target.read_bytes() == b"the old adapter"
    result = train_lora(options(data, tiny_model_dir, tmp_path, steps=2, overwrite=True),
                        progress=False)
    assert result.adapter == target and files.describe(target).components == ["prior", "text_encoder", "unet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hearts.training", "hearts.safetensors"]


def test_make_dataset_writes_hearts_and_outlined_shapes(tmp_path, capsys):
    assert main(["make-dataset", "heart", str(tmp_path / "heart"), "--count", "4", "--seed", "1"]) == 0
    assert main(["make-dataset", "outline", str(tmp_path / "outline"), "--count", "4"]) == 0
    hearts = [json.loads(line) for line in (tmp_path / "heart" / "metadata.jsonl").read_text().splitlines()]
    outlines = [json.loads(line) for line in (tmp_path / "outline" / "metadata.jsonl").read_text().splitlines()]
    assert {r["shape"] for r in hearts} == {"heart"} and all("heart" in r["text"] for r in hearts)
    assert {r["style"] for r in outlines} == {"outline"} and all("outlined" in r["text"] for r in outlines)
    assert (tmp_path / "heart" / "00003.txt").read_text() == hearts[3]["text"]
    # The base world, e.g. regularization images beside a concept's: filled base shapes, captions without "outlined".
    assert main(["make-dataset", "shapes", str(tmp_path / "shapes"), "--count", "8", "--seed", "2"]) == 0
    base = [json.loads(line) for line in (tmp_path / "shapes" / "metadata.jsonl").read_text().splitlines()]
    assert {r["style"] for r in base} == {"filled"} and {r["shape"] for r in base} <= set(shapes.SHAPES)
    assert not any("outlined" in r["text"] or "heart" in r["text"] for r in base)
    assert main(["make-dataset", "heart", str(tmp_path / "heart")]) == 2
    assert "refusing to mix datasets" in capsys.readouterr().err


def test_a_decoder_that_reads_the_caption_tokens_trains_with_them(data, tiny_model_dir, tmp_path, monkeypatch):
    """Kandinsky 2.1-style U-Net (`text_image_proj`): its LoRA sees the caption's token states, and the text encoder's
    LoRA learns through it too."""
    import shutil

    from diffusers import UNet2DConditionModel

    from imagegen.pipeline import UnCLIPPipeline

    if not hasattr(UnCLIPPipeline, "decoder_reads_text"):
        pytest.skip("the pipeline does not feed token states to the decoder")
    model = tmp_path / "tiny-text"
    shutil.copytree(tiny_model_dir, model)
    unet = UNet2DConditionModel.from_pretrained(model / "decoder" / "unet")
    torch.manual_seed(0)
    UNet2DConditionModel.from_config({**unet.config, "encoder_hid_dim_type": "text_image_proj"}).save_pretrained(
        model / "decoder" / "unet")
    result = train_lora(options(data, model, tmp_path / "out", components=("unet", "text_encoder"), steps=3),
                        progress=False)
    assert files.describe(result.adapter).components == ["text_encoder", "unet"]
    assert changes_the_output(model, result.adapter, monkeypatch)


def test_conv_rank_also_trains_the_resnet_convolutions(data, tiny_model_dir, tmp_path, monkeypatch):
    """kohya's LoCon (conv_dim): 3x3 convolutions get their own rank; the file records it per module, it loads, changes
    the output, fuses to the unfused image, unloads bit-exactly, and survives the kohya round trip."""
    from imagegen.lora import formats

    result = train_lora(options(data, tiny_model_dir, tmp_path, components=("unet",), rank=4, alpha=2.0, conv_rank=2,
                                steps=3), progress=False)
    tensors = load_file(result.adapter)
    conv_down = [k for k in tensors if k.endswith("conv1.lora_A.weight")]
    assert conv_down and all(tensors[k].shape[0] == 2 and tensors[k].ndim == 4 for k in conv_down)
    metadata = files.describe(result.adapter).metadata
    config = json.loads(metadata["imagegen.lora_config.unet"])
    assert config["r"] == 4 and config["lora_alpha"] == 2.0
    conv_module = conv_down[0][len("unet."):].rsplit(".lora_A", 1)[0]
    assert config["rank_pattern"][f"^{conv_module}$"] == 2 and config["alpha_pattern"][f"^{conv_module}$"] == 1.0
    assert json.loads(metadata["imagegen.training"])["conv_rank"] == 2
    assert json.loads(metadata["imagegen.ranks"]) == {"unet": 4} and metadata["ss_network_dim"] == "4"
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1.0"}  # kohya's LoCon keys
    assert changes_the_output(tiny_model_dir, result.adapter, monkeypatch)

    pipe = imagegen.load_pipeline(str(tiny_model_dir))
    pipe.load_lora(result.adapter.stem)
    unfused = generate(pipe)
    pipe.fuse_loras()
    assert np.abs(generate(pipe) - unfused).max() < 1e-4
    pipe.unfuse_loras()
    ours = formats.from_tensors(tensors, files.metadata(result.adapter), {"unet": pipe.unet}).components["unet"]
    kohya = formats.to_kohya(formats.AdapterWeights({"unet": ours}))
    assert any(k.endswith("_conv1.lora_down.weight") for k in kohya)
    twin = formats.from_tensors(kohya, {}, {"unet": pipe.unet}).components["unet"]
    assert formats.module_alphas(twin) == formats.module_alphas(ours)
    assert {k: v.shape for k, v in twin.state_dict.items()} == {k: v.shape for k, v in ours.state_dict.items()}


def test_vae_component_learns_to_redraw_the_training_images(data, tiny_model_dir, tmp_path, monkeypatch):
    """The VAE decoder (a MoVQ here) gets LoRA layers on its convolutions and attention, none on the encoder; trained
    with its reconstruction loss it redraws the training images closer than the base decoder does; `vae=0` switches it
    off exactly; it survives the kohya round trip (`lora_vae_`) and unloads bit-exactly."""
    from imagegen.lora import formats
    from imagegen.pipeline import UnCLIPPipeline
    from imagegen.train.lora import data as lora_data

    result = train_lora(options(data, tiny_model_dir, tmp_path, components=("vae",), steps=10, lr=3e-3, batch_size=4,
                                grad_accum=1, vae_batch_size=3), progress=False)
    tensors = load_file(result.adapter)
    assert tensors and all(k.startswith("vae.decoder.") for k in tensors)
    assert any(".conv_out." in k for k in tensors) and any(".to_q." in k for k in tensors)  # convolutions and attention
    assert any(k.endswith("conv_y.lora_A.weight") for k in tensors)  # MoVQ's spatial norms too
    info = files.describe(result.adapter)
    assert info.components == ["vae"] and json.loads(info.metadata["imagegen.training"])["vae_batch_size"] == 3

    monkeypatch.setenv("IMAGEGEN_LORA_PATH", str(result.adapter.parent))
    pipe = imagegen.load_pipeline(str(tiny_model_dir))
    examples = lora_data.read_dataset(str(data), False)
    cached, _ = lora_data.encode_dataset(pipe, examples, 32, 32, False, keep_pixels=True)

    def reconstruction_error():
        with torch.no_grad():
            return torch.mean((UnCLIPPipeline.vae_decode(pipe.vae, cached["latents"]) - cached["pixels"]) ** 2).item()

    base_error, base_image = reconstruction_error(), generate(pipe)
    pipe.load_lora("hearts")
    assert reconstruction_error() < 0.9 * base_error
    assert np.abs(generate(pipe) - base_image).max() > 1e-3
    pipe.set_lora_weights({"hearts": {"vae": 0.0}})
    assert np.array_equal(generate(pipe), base_image)

    ours = formats.from_tensors(tensors, files.metadata(result.adapter), {"vae": pipe.vae}).components["vae"]
    kohya = formats.to_kohya(formats.AdapterWeights({"vae": ours}))
    assert kohya and all(k.startswith("lora_vae_decoder_") for k in kohya)
    twin = formats.from_tensors(kohya, {}, {"vae": pipe.vae}).components["vae"]
    assert all(torch.equal(twin.state_dict[k], v) for k, v in ours.state_dict.items())
    pipe.unload_lora()
    assert np.array_equal(generate(pipe), base_image)


def make_bad_data(tmp_path, data, case) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir()
    if case == "empty":
        return folder
    for name in ("00000", "00001", "00002"):
        for suffix in (".png", ".txt"):
            (folder / f"{name}{suffix}").write_bytes((data / f"{name}{suffix}").read_bytes())
    if case == "no_caption":
        (folder / "00001.txt").unlink()
        (folder / "00002.txt").write_text("  \n")
    elif case == "unreadable":
        (folder / "00001.png").write_bytes(b"not a png")
    elif case == "metadata":
        (folder / "metadata.jsonl").write_text('{"file_name": "00000.png", "text": "a heart"}\n'
                                               '{"file_name": "00002.png"}\n{"file_name": "gone.png", "text": "x"}\n')
    return folder


@pytest.mark.parametrize("case,arguments,message", [
    ("empty", [], "no images in .*bad"),
    ("no_caption", [], "2 image\\(s\\) in .* have no caption .*: 00001.png, 00002.png"),
    ("unreadable", [], "1 unreadable image\\(s\\) in .*: 00001.png; .* --skip-bad"),
    ("metadata", [], "1 image\\(s\\) listed in .*metadata.jsonl' do not exist: gone.png"),
    ("missing", [], "training data folder .* does not exist"),
    ("good", ["--rank", "0"], "--rank must be a whole number >= 1, got 0"),
    ("good", ["--components", "unet,movq"],
     "components must be some of unet, prior, text_encoder, vae .*got unet,movq"),
    ("good", ["--mixed-precision", "fp16"], "--mixed-precision must be one of no, bf16"),
    ("good", ["--lr-scheduler", "step"], "--lr-scheduler must be one of constant, cosine, linear, got 'step'"),
    ("good", ["--ema-decay", "1"], "--ema-decay must be a number in \\[0, 1\\) .*got 1.0"),
    ("good", ["--lr-warmup-steps", "-3"], "--lr-warmup-steps must be a whole number >= 0, got -3"),
    ("good", ["--min-timestep", "10", "--max-timestep", "5"],
     "--min-timestep 10 and --max-timestep 5 must be whole numbers with 0 <= min < max"),
    ("good", ["--min-snr-gamma", "-1"], "--min-snr-gamma must be a finite number >= 0 \\(0: plain MSE\\), got -1.0"),
    ("good", ["--max-timestep", "5000"], "--max-timestep 5000 is beyond the decoder's [0-9]+ training timesteps"),
    ("good", ["--conv-rank", "-1"], "--conv-rank must be a whole number >= 0, got -1"),
    ("good", ["--conv-rank", "2", "--components", "prior"], "--conv-rank 2 needs the unet component"),
    ("good", ["--name", "../x"], "adapter name '../x' must be a plain name"),
    ("exists", [], "adapter .*hearts.safetensors' exists; pass --overwrite"),
    ("good", ["--resume", "latest"], "nothing to resume: no checkpoint of 'hearts'"),
    ("earlier_run", [], "holds checkpoints of an earlier run of 'hearts'; continue it with --resume latest"),
])
def test_bad_input_is_one_line_and_writes_nothing(data, tiny_model_dir, tmp_path, capsys, case, arguments, message):
    import re

    folder = data if case in ("good", "exists", "earlier_run") else make_bad_data(tmp_path, data, case)
    if case == "missing":
        folder = tmp_path / "nowhere"
    out = tmp_path / "adapters"
    out.mkdir()
    if case == "exists":
        (out / "hearts.safetensors").write_bytes(b"old")
    if case == "earlier_run":
        (out / ".hearts.training" / "checkpoints" / "step-000003").mkdir(parents=True)
        (out / ".hearts.training" / "checkpoints" / "step-000003" / "state.pt").write_bytes(b"x")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = ["train-lora", str(folder), "--name", "hearts", "--base", str(tiny_model_dir), "--out", str(out)]
    if "--name" in arguments:
        argv = argv[:2] + argv[4:]
    assert main(argv + arguments) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_skip_bad_trains_without_the_unreadable_images(data, tiny_model_dir, tmp_path):
    folder = make_bad_data(tmp_path, data, "unreadable")
    result = train_lora(options(folder, tiny_model_dir, tmp_path / "out", steps=1, skip_bad=True), progress=False)
    assert json.loads(files.metadata(result.adapter)["imagegen.training"])["images"] == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds accelerate's process count in /proc")
def test_two_process_cpu_data_parallel_run_writes_one_adapter(data, tiny_model_dir, tmp_path, monkeypatch):
    """`accelerate launch --num_processes 2 --cpu`: two gloo processes, one adapter (about 30 s on a busy machine)."""
    out = tmp_path / "adapters"
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--num_processes", "2", "--cpu", "--main_process_port", str(free_port()),
               "-m", "imagegen", "train-lora", str(data), "--name", "hearts", "--base", str(tiny_model_dir),
               "--components", "unet,prior,text_encoder", "--steps", "3", "--batch-size", "2", "--lr", "1e-2",
               "--resolution", "32", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [".hearts.training", "hearts.safetensors"]
    training = json.loads(files.metadata(out / "hearts.safetensors")["imagegen.training"])
    assert training["processes"] == 2 and training["effective_batch_size"] == 4 and training["steps"] == 3
    assert changes_the_output(tiny_model_dir, out / "hearts.safetensors", monkeypatch)
