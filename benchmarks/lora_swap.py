"""LoRA hot swap and fusing, measured side by side in one run on one model:

  (a) switching the active adapter between two generations / reloading the pipeline from disk   (goal <= 0.05)
      (also: loading a new adapter file the first time / reloading the pipeline)
  (b) time per decoder U-Net step with the adapter fused / unfused

The adapters are random rank-8 LoRAs on the U-Net, prior and text encoder attention projections.
Uses the embedded `shapes` model when it is present, else tiny random components.
Run alone (other jobs on the 2 cores distort it):  python benchmarks/lora_swap.py [--repeats 7]
"""
import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import imagegen  # noqa: E402
from imagegen.lora.requests import LoraRequest  # noqa: E402
from imagegen.presets import find_preset  # noqa: E402

TARGETS = {"unet": ["to_q", "to_k", "to_v", "to_out.0"], "prior": ["to_q", "to_k", "to_v"],
           "text_encoder": ["q_proj", "k_proj", "v_proj"]}


def random_adapter(pipe, folder: Path, name: str, seed: int) -> Path:
    torch.manual_seed(seed)
    tensors = {}
    for component, targets in TARGETS.items():
        model = copy.deepcopy(getattr(pipe, component))
        inject_adapter_in_model(LoraConfig(r=8, lora_alpha=8, target_modules=targets, init_lora_weights=False), model,
                                adapter_name="x")
        tensors.update({f"{component}.{k}": v for k, v in get_peft_model_state_dict(model, adapter_name="x").items()})
    path = folder / f"{name}.safetensors"
    save_file(tensors, path)
    return path


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="decoder steps timed for (b)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp())
    try:
        find_preset("shapes")
        from imagegen.loading import resolve_folder

        resolve_folder(find_preset("shapes").decoder)
        model = "shapes"
    except Exception:
        from imagegen.build.tiny import save_tiny_model

        model = str(save_tiny_model(work / "tiny"))
    pipe = imagegen.load_pipeline(model)
    paths = [random_adapter(pipe, work, name, seed) for seed, name in enumerate(("first", "second"))]

    reload_s = median_time(lambda: imagegen.load_pipeline(model), max(3, args.repeats // 2))
    first_load_s = median_time(lambda: (pipe.loras.load(str(paths[0])), pipe.unload_lora()), 3)
    for path in paths:
        pipe.loras.load(str(path))
    toggle = iter(range(10**9))
    switch_s = median_time(lambda: pipe.loras.activate([LoraRequest(("first", "second")[next(toggle) % 2])]),
                           args.repeats * 4)

    # (b) per decoder step: the U-Net call with classifier-free guidance's doubled batch, as in the pipeline
    pipe.loras.activate([LoraRequest("first")])
    side = pipe.model.decoder_defaults.height // pipe.vae_scale_factor
    sample = torch.randn(2, pipe.unet.config.in_channels, side, side)
    embeds = torch.randn(2, pipe.prior.config.embedding_dim)
    with torch.no_grad():  # a decoder that reads the prompt's tokens gets them too
        tokens = pipe.encode_text(["", "a red circle"])[1] if pipe.decoder_reads_text else None

    def decoder_steps():
        with torch.inference_mode():
            for t in range(args.steps):
                pipe.unet(sample, t, encoder_hidden_states=tokens, added_cond_kwargs={"image_embeds": embeds})

    decoder_steps()
    unfused_s = median_time(decoder_steps, args.repeats) / args.steps
    pipe.fuse_loras()
    fused_s = median_time(decoder_steps, args.repeats) / args.steps
    pipe.unfuse_loras()

    print(f"model: {model if model == 'shapes' else 'tiny random components'}, adapters: rank 8 on U-Net, prior and "
          f"text encoder, {torch.get_num_threads()} threads, medians")
    print(f"reload pipeline from disk:        {reload_s * 1000:9.1f} ms")
    print(f"load a new adapter file:          {first_load_s * 1000:9.1f} ms  ratio {first_load_s / reload_s:.3f}")
    print(f"switch between loaded adapters:   {switch_s * 1000:9.1f} ms  ratio {switch_s / reload_s:.4f}")
    print(f"decoder step unfused / fused:     {unfused_s * 1000:.2f} / {fused_s * 1000:.2f} ms")
    verdict = "OK" if switch_s / reload_s <= 0.05 else "ABOVE GOAL"
    print(f"RESULT switch/reload = {switch_s / reload_s:.4f} (goal <= 0.05): {verdict}; "
          f"fused/unfused step time = {fused_s / unfused_s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
