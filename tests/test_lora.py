"""LoRA adapters: parity with diffusers' loader, kohya files, hot swap, exact unloading, fusing, and validation."""
import hashlib
import json
import struct

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from PIL import Image

import imagegen
from imagegen.cli import main
from imagegen.errors import UserError
from imagegen.record import parse_params_line
from imagegen.lora import formats
from imagegen.lora.requests import LoraRequest, parse_spec, split_prompt
from imagegen.settings import DecoderSettings, PriorSettings

PRIOR, DECODER = PriorSettings(steps=3), DecoderSettings(steps=3, width=32, height=32)
TARGETS = {"unet": ["to_q", "to_k", "to_v", "to_out.0"], "prior": ["to_q", "to_v"], "text_encoder": ["q_proj", "v_proj"],
           "vae": ["decoder.conv_in", "decoder.conv_out"]}


def random_lora(model, targets, seed, rank=4, alpha=8.0):
    """A random peft LoRA for a copy of `model` (init_lora_weights=False makes B non-zero, so it changes outputs)."""
    import copy

    torch.manual_seed(seed)
    twin = copy.deepcopy(model)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False),
                            twin, adapter_name="new")
    return get_peft_model_state_dict(twin, adapter_name="new")


def write(folder, name, pipe, components=("unet",), seed=0, base=None, kohya=False):
    """An adapter file in imagegen's format (peft keys + metadata) or kohya's."""
    from safetensors.torch import save_file

    models = {"unet": pipe.unet, "prior": pipe.prior, "text_encoder": pipe.text_encoder, "vae": pipe.vae}
    tensors = {f"{c}.{k}": v for c in components for k, v in random_lora(models[c], TARGETS[c], seed).items()}
    metadata = {"imagegen.base_model": json.dumps(base)} if base else {}
    if kohya:
        tensors = formats.to_kohya(formats.from_tensors(tensors, {}, models))
    path = folder / f"{name}.safetensors"
    save_file(tensors, path, metadata=metadata)
    return path


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return imagegen.load_pipeline(str(tiny_model_dir))


@pytest.fixture
def lora_dir(tmp_path, monkeypatch, pipe):
    monkeypatch.setenv("IMAGEGEN_LORA_PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # the repository's own lora_adapters/ (the shipped examples) stays out of these tests
    yield tmp_path
    pipe.unload_lora()


def generate(pipe, prompt="a red circle", **kwargs):
    return pipe(prompt, seed=1, prior=PRIOR, decoder=DECODER, progress=False, **kwargs).pixels


def unet_output(unet):
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 16, 16, generator=generator)
    embeds = torch.randn(2, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": embeds}).sample


def test_unet_lora_matches_diffusers_load_lora_adapter(pipe, lora_dir, tiny_model_dir):
    from diffusers import UNet2DConditionModel

    path = write(lora_dir, "style", pipe, ("unet",))
    pipe.load_lora("style", 0.7)
    reference = UNet2DConditionModel.from_pretrained(tiny_model_dir / "decoder" / "unet")
    reference.load_lora_adapter(str(path), prefix="unet", adapter_name="style")
    reference.set_adapters(["style"], [0.7])
    ours, theirs = unet_output(pipe.unet), unet_output(reference)
    assert (ours - unet_output(UNet2DConditionModel.from_pretrained(tiny_model_dir / "decoder" / "unet"))).abs().max() > 1e-3
    assert (ours - theirs).abs().max() <= 1e-5


def test_kohya_file_equals_its_peft_twin(pipe, lora_dir):
    write(lora_dir, "peft", pipe, ("unet", "text_encoder"), seed=3)
    write(lora_dir, "kohya", pipe, ("unet", "text_encoder"), seed=3, kohya=True)
    from safetensors.torch import load_file

    keys = list(load_file(lora_dir / "kohya.safetensors"))
    assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in keys)
    assert any(k.startswith("lora_te_") and k.endswith(".alpha") for k in keys)
    pipe.load_lora("peft")
    peft_unet, peft_text = unet_output(pipe.unet), pipe.encode_text(["a red circle"])[0]
    pipe.set_lora_weights({"kohya": 1.0})
    kohya_unet, kohya_text = unet_output(pipe.unet), pipe.encode_text(["a red circle"])[0]
    assert (peft_unet - kohya_unet).abs().max() <= 1e-5
    assert (peft_text - kohya_text).abs().max() <= 1e-5


def test_hot_swap_keeps_base_weights_and_unloading_restores_them_exactly(pipe, lora_dir):
    base = generate(pipe)
    base_weight = pipe.unet.down_blocks[1].attentions[0].to_q.weight.data_ptr()
    write(lora_dir, "a", pipe, ("unet", "prior", "text_encoder"), seed=1)
    write(lora_dir, "b", pipe, ("unet",), seed=2)
    with_a = generate(pipe, loras=[LoraRequest("a")])
    with_b = generate(pipe, loras=[parse_spec("b:0.8")])
    again_a = generate(pipe, loras=[LoraRequest("a")])
    assert np.abs(with_a - base).max() > 1e-3 and np.abs(with_b - with_a).max() > 1e-3
    assert np.array_equal(with_a, again_a)
    layer = pipe.unet.down_blocks[1].attentions[0].to_q
    assert layer.get_base_layer().weight.data_ptr() == base_weight  # the base weights were never reloaded
    assert np.array_equal(generate(pipe, loras=[]), base)  # no adapter active
    pipe.unload_lora()
    assert type(pipe.unet.down_blocks[1].attentions[0].to_q) is torch.nn.Linear
    assert np.array_equal(generate(pipe), base)


def test_several_adapters_per_component_weights_and_prompt_tags(pipe, lora_dir):
    write(lora_dir, "a", pipe, ("unet", "prior"), seed=1)
    write(lora_dir, "b", pipe, ("unet",), seed=2)
    both = generate(pipe, "a red circle <lora:a:unet=1:prior=0.5:te=0> <lora:b:0.3>")
    assert pipe.loras.active == {"a": {"unet": 1.0, "prior": 0.5, "text_encoder": 0.0, "vae": 0.0},
                                 "b": {"unet": 0.3, "prior": 0.3, "text_encoder": 0.3, "vae": 0.3}}
    same = generate(pipe, loras=[parse_spec("a:unet=1:prior=0.5"), parse_spec("b:0.3")])
    assert np.array_equal(both, same)
    prior_off = generate(pipe, loras=[parse_spec("a:unet=1:prior=0"), parse_spec("b:0.3")])
    assert np.abs(prior_off - both).max() > 1e-4  # the prior's LoRA matters
    assert split_prompt("a <lora:x:1> red  circle") == ("a red circle", [LoraRequest("x")])
    write(lora_dir, "redraw", pipe, ("vae",), seed=3)  # the VAE decoder: only the last stage changes
    base = generate(pipe, loras=[])
    assert np.abs(generate(pipe, "a red circle <lora:redraw:vae=1>") - base).max() > 1e-4
    assert np.array_equal(generate(pipe, "a red circle <lora:redraw:vae=0>"), base)


def test_fused_equals_unfused_and_unfusing_is_exact(pipe, lora_dir):
    base = generate(pipe)
    write(lora_dir, "a", pipe, ("unet", "prior", "text_encoder"), seed=4)
    unfused = generate(pipe, loras=[parse_spec("a:0.6")])
    pipe.fuse_loras()
    fused = generate(pipe, loras=[parse_spec("a:0.6")])
    assert np.abs(fused - unfused).max() <= 1e-4
    with pytest.raises(UserError, match="fused"):
        generate(pipe, loras=[parse_spec("a:0.2")])
    pipe.unfuse_loras()
    assert np.array_equal(generate(pipe, loras=[parse_spec("a:0.6")]), unfused)
    pipe.unload_lora()
    assert np.array_equal(generate(pipe), base)


def test_png_records_adapters_and_a1111_lora_hashes(pipe, lora_dir, tmp_path):
    path = write(lora_dir, "a", pipe, ("unet",), seed=5)
    result = pipe("a red circle <lora:a:0.5>", seed=1, prior=PRIOR, decoder=DECODER, progress=False)
    saved = result.save(tmp_path / "out")[0]
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    expected = hashlib.sha256(raw[8 + length:]).hexdigest()[:12]
    text = Image.open(saved).text
    assert f"Lora hashes: \"a: {expected}\"" in text["parameters"]
    record = json.loads(text["imagegen"])
    assert record["loras"][0]["hash"] == expected and record["loras"][0]["weights"]["unet"] == 0.5


def test_a_step_window_applies_the_unet_part_to_those_decoder_steps_only(pipe, lora_dir):
    from diffusers.utils.peft_utils import set_adapter_layers

    write(lora_dir, "a", pipe, ("unet",), seed=8)
    decoder = DecoderSettings(steps=4, width=32, height=32)

    def run(*specs):
        return pipe("a red circle", seed=1, prior=PRIOR, decoder=decoder, progress=False,
                    loras=[parse_spec(s) for s in specs])

    base, full, late = run().pixels, run("a:0.7").pixels, run("a:0.7:start=0.5")
    assert np.array_equal(run("a:0.7:start=0:stop=1").pixels, full)
    calls = []

    def by_hand(module, args):  # the reference: LoRA layers switched off for the first 2 of the 4 steps
        set_adapter_layers(module, enabled=len(calls) >= 2)
        calls.append(1)

    handle = pipe.unet.register_forward_pre_hook(by_hand)
    try:
        expected = run("a:0.7").pixels
    finally:
        handle.remove()
    assert len(calls) == 4 and np.array_equal(late.pixels, expected)
    assert np.abs(late.pixels - full).max() > 1e-4 and np.abs(late.pixels - base).max() > 1e-4
    assert np.array_equal(run("a:0.7").pixels, full)  # the adapter is whole again after a windowed generation
    record = late.records[0]
    loras_field = parse_params_line(record.to_infotext().rpartition("\n")[2])["Loras"]
    assert record.loras[0].window == (0.5, 1.0) and "a:unet=0.7" in loras_field
    assert loras_field.endswith(":start=0.5:stop=1")
    request = parse_spec("a:unet=1:vae=0.5:stop=0.8")
    assert request.window == (0.0, 0.8) and request.weights["vae"] == 0.5 and parse_spec(request.describe()) == request
    with pytest.raises(UserError, match="start 0.6 and stop 0.5 must be fractions of the steps"):
        parse_spec("a:1:start=0.6:stop=0.5")


def corrupt(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case,message", [
    ("other_base", "was made for base model 'elsewhere' \\(fingerprint 0000\\), but the loaded model is 'tiny'"),
    ("no_module", "does not fit this model: unet.no_such_block"),
    ("bad_shape", "does not fit input"),
    ("pickle", "is a pickle file"),
    ("truncated", "not a valid safetensors file"),
    ("unknown", "unknown LoRA adapter 'ghost'; available: .*good"),
    ("path_name", "must be a plain name"),
    ("dotdot", "must be a plain name"),
    ("weight", "LoRA weight 'abc' in 'good:abc' is not a finite number"),
])
def test_bad_adapters_are_refused_and_leave_the_pipeline_as_it_was(pipe, lora_dir, case, message):
    from safetensors.torch import save_file

    base = generate(pipe)
    write(lora_dir, "good", pipe, ("unet", "text_encoder"), seed=6)
    name = "bad"
    if case == "other_base":
        write(lora_dir, "bad", pipe, ("unet",), base={"name": "elsewhere", "fingerprint": "0000"})
    elif case in ("no_module", "bad_shape"):
        tensors = {f"unet.{k}": v for k, v in random_lora(pipe.unet, TARGETS["unet"], 7).items()}
        key = next(k for k in tensors if k.endswith("lora_A.weight"))
        if case == "no_module":
            tensors["unet.no_such_block.lora_A.weight"] = tensors[key].clone()
        else:
            tensors[key] = torch.zeros(4, 999)
        save_file(tensors, lora_dir / "bad.safetensors")
    elif case == "pickle":
        torch.save({}, lora_dir / "bad.pt")
        name = str(lora_dir / "bad.pt")
    elif case == "truncated":
        corrupt(write(lora_dir, "bad", pipe, ("unet",)))
    elif case == "unknown":
        name = "ghost"
    elif case == "path_name":
        name = "sub/bad"
    elif case == "dotdot":
        name = "..bad"
    with pytest.raises(UserError, match=message) as err:
        spec = "good:abc" if case == "weight" else f"{name}:1"
        generate(pipe, loras=[LoraRequest("good"), parse_spec(spec)])
    assert "\n" not in str(err.value)
    assert "bad" not in pipe.loras.loaded
    assert np.array_equal(generate(pipe), base)  # nothing half-applied


def test_lora_commands_list_inspect_convert(pipe, lora_dir, tiny_model_dir, tmp_path, capsys):
    write(lora_dir, "style", pipe, ("unet", "prior"), seed=8)
    assert main(["lora", "list", "--json"]) == 0
    rows = [row for row in map(json.loads, capsys.readouterr().out.splitlines()) if row["source"] != "package"]
    assert [r["name"] for r in rows] == ["style"] and rows[0]["components"] == ["prior", "unet"]
    assert main(["lora", "inspect", "style", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["lora_hash"]) == 12
    out = tmp_path / "style-kohya.safetensors"
    assert main(["lora", "convert", "style", str(out), "--model", str(tiny_model_dir)]) == 0
    capsys.readouterr()
    pipe.load_lora("style")
    peft_output = unet_output(pipe.unet)
    pipe.load_lora(str(out))
    pipe.set_lora_weights({"style-kohya": 1.0})
    assert (unet_output(pipe.unet) - peft_output).abs().max() <= 1e-5
    assert main(["lora", "convert", "style", str(out), "--model", str(tiny_model_dir)]) == 2
    assert "exists" in capsys.readouterr().err


def test_grid_rows_use_exactly_the_adapters_their_tags_name(pipe, lora_dir, tiny_model_dir, monkeypatch):
    """A row without tags is the base model even after a row with <lora:...> (as A1111's prompt grids)."""
    from dataclasses import replace

    from imagegen import loading
    from imagegen.grid import LABEL_WIDTH

    monkeypatch.setattr(loading, "load_pipeline", lambda *args, **kwargs: pipe)  # the already loaded tiny pipeline
    monkeypatch.setattr(pipe, "model", replace(pipe.model, prior_defaults=PRIOR, decoder_defaults=DECODER))  # fast
    write(lora_dir, "style", pipe, ("unet",), seed=3)
    (lora_dir / "tagged.txt").write_text("a red circle <lora:style:1>\na red circle\n")
    (lora_dir / "plain.txt").write_text("a red circle\na red circle\n")
    sheets = {}
    for name in ("plain", "tagged"):
        assert main(["grid", "--prompts-file", str(lora_dir / f"{name}.txt"), "--seeds", "1", "--tile", "32",
                     "--out", str(lora_dir / f"{name}.png")]) == 0
        sheets[name] = np.asarray(Image.open(lora_dir / f"{name}.png"))[:, LABEL_WIDTH:]  # the images, not the labels
    tagged, plain = sheets["tagged"], sheets["plain"]
    half = tagged.shape[0] // 2
    assert not np.array_equal(tagged[:half], plain[:half])  # the adapter changed the first row
    assert np.array_equal(tagged[half:], plain[half:])  # and is off again for the second
