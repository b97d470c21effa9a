"""Kandinsky 2.2's real architectures (imagegen.build.kandinsky22) and the full-scale benchmarks, on the CPU.

The real configurations are checked by constructing them on the meta device (no weights allocated); everything
that runs does so at a narrow, one-layer scale of the same architecture, so the tests stay small and fast.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imagegen.build import kandinsky22 as k22

ROOT = Path(__file__).resolve().parents[1]
TOY = k22.Scale(width_divisor=32, max_layers=1)


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    """Toy-sized ops: a second OpenMP thread only adds barrier waits, and on a busy machine each wait can cost a
    scheduler time slice (a 64x64 run then takes seconds instead of milliseconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    return k22.save_kandinsky22(tmp_path_factory.mktemp("k22") / "toy", "all", "float32", TOY, seed=0)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_real_configs_have_the_published_sizes_and_allocate_nothing_on_meta():
    before = rss_bytes()
    counts = k22.parameter_counts()  # asserts every parameter is on the meta device
    assert rss_bytes() - before < 300 * 2**20  # 4.9B parameters would be ~19 GB in float32
    for name, published in k22.PUBLISHED_PARAMETERS.items():
        assert abs(counts[name] - published) / published < 0.05, (name, counts[name], published)
    # Exact: the decoder's unet/diffusion_pytorch_model.safetensors is 5.01 GB of float32 (4 bytes a parameter), and
    # the ViT-bigG/14 text tower is SDXL's text_encoder_2.
    assert counts["unet"] == 1_253_057_288 and round(counts["unet"] * 4 / 1e9, 2) == 5.01
    assert counts["text_encoder"] == 694_659_840
    assert counts["image_encoder"] == 1_844_907_264 and counts["prior"] == 1_026_225_920
    assert counts["movq"] == 67_832_495


def test_configs_are_kandinsky_2_2s_and_a_toy_scale_only_narrows_them():
    real, toy = k22.configs(), k22.configs(TOY)
    unet = real["unet"]
    assert unet["block_out_channels"] == (384, 768, 1152, 1536) and unet["layers_per_block"] == 3
    conditioning = (unet["encoder_hid_dim"], unet["encoder_hid_dim_type"], unet["addition_embed_type"])
    assert conditioning == (1280, "image_proj", "image")
    assert (unet["in_channels"], unet["out_channels"], unet["cross_attention_dim"]) == (4, 8, 768)
    assert real["movq"]["block_out_channels"] == (128, 256, 256, 512) and real["movq"]["num_vq_embeddings"] == 16384
    prior = real["prior"]
    assert (prior["embedding_dim"], prior["num_layers"], prior["additional_embeddings"]) == (1280, 20, 4)
    assert (real["image_encoder"]["hidden_size"], real["image_encoder"]["num_hidden_layers"]) == (1664, 48)
    assert (real["text_encoder"]["hidden_size"], real["text_encoder"]["num_hidden_layers"]) == (1280, 32)
    for name in real:
        assert real[name].keys() == toy[name].keys()
        for key, value in real[name].items():
            if isinstance(value, str) or key.endswith("_types"):
                assert toy[name][key] == value, (name, key)  # same blocks, same wiring
    assert toy["unet"]["block_out_channels"] == (12, 24, 36, 48) and toy["unet"]["layers_per_block"] == 1
    # The 1280-d embedding narrows too, the same everywhere it is read or written.
    assert toy["prior"]["embedding_dim"] == toy["image_encoder"]["projection_dim"] == 40
    assert toy["text_encoder"]["projection_dim"] == toy["unet"]["encoder_hid_dim"] == 40
    with pytest.raises(ValueError, match="power of two"):
        k22.Scale(width_divisor=3)


def test_build_loads_in_imagegen_and_matches_diffusers(toy_folder):
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

    import imagegen
    from imagegen.settings import DecoderSettings, PriorSettings

    prior_index = json.loads((toy_folder / "prior" / "model_index.json").read_text())
    decoder_index = json.loads((toy_folder / "decoder" / "model_index.json").read_text())
    assert prior_index["_class_name"] == "KandinskyV22PriorPipeline"
    assert prior_index["scheduler"] == ["diffusers", "UnCLIPScheduler"]
    assert decoder_index["_class_name"] == "KandinskyV22Pipeline" and decoder_index["movq"][1] == "VQModel"
    record = k22.read_build_record(toy_folder)
    assert not record["parts"]["prior"]["stand_in"] and not record["parts"]["decoder"]["stand_in"]

    pipe = imagegen.load_pipeline(str(toy_folder))
    assert len(pipe.tokenizer) == 49408 and pipe.unet.config.encoder_hid_dim == 40
    result = pipe("a red fox", seed=3, num_images=2, prior=PriorSettings(steps=2, guidance=4.0),
                  decoder=DecoderSettings(steps=2, guidance=4.0, width=64, height=64), progress=False)
    prior = KandinskyV22PriorPipeline.from_pretrained(toy_folder / "prior")
    decoder = KandinskyV22Pipeline.from_pretrained(toy_folder / "decoder")
    gens = [torch.Generator("cpu").manual_seed(3 + i) for i in range(2)]
    embeds = prior("a red fox", num_images_per_prompt=2, num_inference_steps=2, guidance_scale=4.0, generator=gens)
    gens = [torch.Generator("cpu").manual_seed(3 + i) for i in range(2)]
    expected = decoder(image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds, height=64,
                       width=64, num_inference_steps=2, guidance_scale=4.0, generator=gens, output_type="np").images
    assert result.pixels.std() > 0.01  # random weights still give an image that depends on the noise
    assert np.abs(result.pixels - expected).max() <= 1e-4


def test_cli_decoder_part_in_bfloat16_writes_a_one_layer_stand_in_prior(tmp_path, capsys):
    from safetensors import safe_open

    out = tmp_path / "dec"
    assert k22.main([str(out), "--parts", "decoder", "--dtype", "bfloat16", "--width-divisor", "32",
                     "--max-layers", "1"]) == 0
    assert "stand-in" in capsys.readouterr().out
    record = k22.read_build_record(out)
    assert record["dtype"] == "bfloat16"
    assert record["parts"]["prior"] == {**record["parts"]["prior"], "stand_in": True,
                                        "scale": {"width_divisor": 32, "max_layers": 1}}
    assert not record["parts"]["decoder"]["stand_in"]
    with safe_open(str(out / "decoder" / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    with pytest.raises(SystemExit):
        k22.main([str(tmp_path / "bad"), "--width-divisor", "3"])
    assert not (tmp_path / "bad").exists()


def test_full_scale_benchmark_gives_ratio_equality_and_peaks(toy_folder, capsys):
    bench = load_benchmark("full_scale")
    args = bench.parse(["--folder", str(toy_folder), "--size", "64", "--steps", "2", "--repeats", "1"])
    results = bench.run(args)
    r = results["modes"]["float32"]
    assert r["max_abs_diff"] <= bench.EQUALITY_LIMIT
    assert r["ratio"] > 0 and r["imagegen"]["s_per_image"] > 0
    assert r["imagegen"]["unet_calls"] == r["diffusers"]["unet_calls"] == 2  # guided: one batch-2 call a step
    assert r["imagegen"]["peak_rss"] > 2**27 and r["diffusers"]["peak_rss"] > 2**27  # torch alone holds more
    assert 0 <= r["imagegen"]["peak_over_weights"] < r["imagegen"]["peak_rss"]
    assert ("skipped" in results["modes"].get("autocast-bf16", {})) == (not bench.native_bf16())
    assert results["attention"]["auto_resolves_to"] == results["attention"]["sdpa_resolves_to"] == "sdpa"
    assert results["attention"]["classic_vs_sdpa_max_abs_diff"] < 1e-4
    bench.report(results)
    out = capsys.readouterr().out
    assert "RESULT float32: imagegen/diffusers wall-time ratio" in out and "peak RSS imagegen" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_check_without_cuda_writes_skipped_rows_and_a_last_line(tmp_path):
    check = load_benchmark("gpu_check")
    rows_file = tmp_path / "rows.jsonl"
    for step in ("build", "precision", "attention", "compile", "full"):
        assert check.main([step, "--rows", str(rows_file)]) == 0
    rows = check.read_rows(rows_file)
    assert [r["verdict"] for r in rows] == [check.SKIPPED] * 5
    text = check.table(rows, seconds=1)
    assert "A10G" in text and "A100" in text
    assert text.splitlines()[-1] == "gpu_check passed: 0 ok, 0 failed, 5 skipped in 1 s"
    assert "xformers" not in sys.modules
    assert check.verdict_within(51.0, 50.0) == "ok" and check.verdict_within(47.5, 50.0).startswith("FAIL")


def test_gpu_check_steps_on_cpu_full_size_step_and_precision(toy_folder):
    check = load_benchmark("gpu_check")
    args = check.parse(["full", "--device", "cpu", "--smoke", "--folder", str(toy_folder), "--batches", "1"])
    rows = check.step_full(args)
    compared = [r for r in rows if r["what"].startswith("imagegen/diffusers")]
    assert len(compared) == 1 and compared[0]["verdict"] == "ok" and "max |diff| 0.0e+00" in compared[0]["value"]
    assert any("decoder" in r["value"] and "it/s" in r["value"] for r in rows)
    rows = check.step_precision(check.parse(["precision", "--device", "cpu", "--smoke", "--dtypes", "float32"]))
    assert len(rows) == 1 and "% of 2 images" in rows[0]["value"]


def test_gpu_check_lora_hot_swap_does_not_recompile_but_a_plain_load_does():
    check = load_benchmark("gpu_check")
    r = check.hotswap_check(check.parse(["compile", "--device", "cpu", "--smoke"]), "tiny", "eager")
    assert r["verdict"] == "ok", r
    assert r["value"].startswith("0 recompile(s) after the hot swap") and "another adapter: 0" not in r["value"]


def test_gpu_check_script_is_strict_bash():
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert "set -euo pipefail" in script and "pytest -q -m gpu" in script
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0
