"""Loading the Kandinsky 2.2 layout: model folders, preset files, the local Hugging Face cache, broken folders."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import imagegen
from imagegen.errors import UserError
from imagegen.presets import find_preset


def test_model_folder_loads_every_component(tiny_pipe):
    from diffusers import PriorTransformer, UNet2DConditionModel, VQModel

    assert isinstance(tiny_pipe.prior, PriorTransformer)
    assert isinstance(tiny_pipe.unet, UNet2DConditionModel)
    assert isinstance(tiny_pipe.vae, VQModel)
    assert tiny_pipe.vae_scale_factor == 2
    assert type(tiny_pipe.prior_scheduler).__name__ == "UnCLIPScheduler"


def test_preset_file_with_relative_paths(tiny_model_dir, tmp_path):
    preset = tmp_path / "mini.toml"
    rel = os.path.relpath(tiny_model_dir, tmp_path)
    preset.write_text(f'name = "mini"\nprior = "{rel}/prior"\ndecoder = "{rel}/decoder"\n'
                      "[decoder_defaults]\nwidth = 32\nheight = 32\nsteps = 3\n")
    pipe = imagegen.load_pipeline(str(preset))
    assert pipe.model.name == "mini" and pipe.model.decoder_defaults.steps == 3
    result = pipe("a red circle", seed=0, progress=False)
    assert result.images[0].size == (32, 32) and result.records[0].model == "mini"


def test_autoencoder_kl_as_movq_decodes_with_its_scaling_factor(tmp_path):
    import torch

    from imagegen.build.tiny import save_tiny_model

    folder = save_tiny_model(tmp_path / "kl", vae="kl", learned_variance=False)
    pipe = imagegen.load_pipeline(str(folder))
    latents = torch.randn(1, 4, 16, 16)
    expected = (pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample * 0.5 + 0.5).clamp(0, 1)
    assert pipe.vae.config.scaling_factor == 0.5
    assert torch.allclose(torch.from_numpy(pipe.decode(latents)).permute(0, 3, 1, 2), expected, atol=1e-6)


@pytest.mark.parametrize("broken,message", [
    ("decoder/unet", "missing the component folder 'unet/'"),
    ("prior/model_index.json", "has no model_index.json"),
])
def test_folder_missing_a_component_names_it(tiny_model_dir, tmp_path, broken, message):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    target = copy / broken
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UserError, match=message):
        imagegen.load_pipeline(str(copy))


def test_pickled_weights_are_never_loaded(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    weights = copy / "decoder" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))  # a pickle-named file must not be read, whatever it holds
    with pytest.raises(UserError, match="cannot load component 'unet'"):
        imagegen.load_pipeline(str(copy))


def test_unknown_class_in_model_index_is_refused(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    index = json.loads((copy / "decoder" / "model_index.json").read_text())
    index["unet"] = ["evil_module", "Payload"]
    (copy / "decoder" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="evil_module.Payload, which imagegen does not load"):
        imagegen.load_pipeline(str(copy))


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown model 'nope'; use a preset name \\(.*kandinsky-2-2"):
        find_preset("nope")


def test_kandinsky_preset_loads_from_the_local_hf_cache_offline(tiny_model_dir, tmp_path):
    """The kandinsky-2-2 preset names hub ids; with HF_HUB_OFFLINE=1 they resolve in the local cache."""
    cache = tmp_path / "hub"
    commit = "0" * 40
    for part in ("prior", "decoder"):
        repo = cache / f"models--kandinsky-community--kandinsky-2-2-{part}"
        shutil.copytree(tiny_model_dir / part, repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "imagegen", "a red circle", "--model", "kandinsky-2-2", "--width", "32", "--height",
         "32", "--steps", "2", "--prior-steps", "2", "--seed", "1", "--out", str(out), "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.splitlines()[0])
    assert record["model"] == "kandinsky-2-2" and (out / "00001-1.png").is_file()
    models = subprocess.run([sys.executable, "-m", "imagegen", "models"], capture_output=True, text=True, env=env)
    assert any(line.startswith("kandinsky-2-2") and "cached" in line for line in models.stdout.splitlines())


def test_hub_id_missing_from_the_cache_is_a_clear_error(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty"))
    proc = subprocess.run([sys.executable, "-m", "imagegen", "x", "--model", "kandinsky-2-2", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "kandinsky-community/kandinsky-2-2-prior" in proc.stderr and "local Hugging Face cache" in proc.stderr
    assert not (tmp_path / "out").exists()
