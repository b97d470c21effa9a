"""Full-size Kandinsky 2.2 decoder (random weights, imagegen.build.kandinsky22) through imagegen and through diffusers'
KandinskyV22Pipeline, side by side in one run on the same module objects (one copy of the weights):

  imagegen:  UnCLIPPipeline.denoise() + decode()           (stage 2 of `pipe(prompt)`)
  diffusers: KandinskyV22Pipeline(image_embeds=..., negative_image_embeds=..., output_type="np")

Same image embeddings and negative embeddings, steps, guidance, size, and one torch.Generator('cpu') per image
seeded seed + i in both; runs alternate in ABBA order. Reported per mode (float32; bfloat16 autocast where the CPU
has native bf16): s/image, U-Net it/s, VAE decode s, "other" s (the time outside both: the pipeline's own work),
peak RSS, the imagegen/diffusers wall-time ratio (medians over the alternating runs; the CPU-time ratio beside it is
steadier on a shared machine) and the largest pixel difference between the two. Also: what `--attention auto` (the
default) resolves to against `sdpa`, and one U-Net forward with the SDPA attention processors against diffusers'
classic (non-SDPA) ones.

Peak memory is the process's peak resident set (VmHWM in /proc/self/status, reset through /proc/self/clear_refs
before each run); "+run" is that peak minus the resident set just before the run (activations and temporaries),
the rest being the shared weights. The model is built once into --folder (a subprocess, so the build's own peak
does not count) and reused by later runs.

Run alone (it takes both cores for minutes; check `uptime` first):
    python benchmarks/full_scale.py [--steps 4] [--size 256] [--repeats 4] [--modes float32,autocast-bf16]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODES = ("float32", "autocast-bf16")
EQUALITY_LIMIT = 1e-4


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


# ---------------------------------------------------------------- memory and timing
class PeakRSS:
    """Peak resident set of this process over a block: VmHWM after resetting it (Linux), else a 5 ms sampler."""

    def __init__(self):
        self.peak = self.before = 0

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        self.before = self._status("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._sampler = None
        except OSError:
            import threading

            import psutil

            self._stop, proc, self._max = threading.Event(), psutil.Process(), [self.before]

            def sample():
                while not self._stop.wait(0.005):
                    self._max[0] = max(self._max[0], proc.memory_info().rss)

            self._sampler = threading.Thread(target=sample, daemon=True)
            self._sampler.start()
        return self

    def __exit__(self, *exc):
        if self._sampler is None:
            self.peak = self._status("VmHWM")
        else:
            self._stop.set()
            self._sampler.join()
            self.peak = self._max[0]


class StageTimer:
    """Wall time of the U-Net loop (first forward start -> last forward end) and of VAE decodes, for whichever
    pipeline calls the shared modules."""

    def __init__(self, unet, vae):
        self.unet_calls, self.unet_first, self.unet_last, self.decode_s = 0, None, None, 0.0
        unet.register_forward_pre_hook(self._pre)
        unet.register_forward_hook(self._post)
        original = vae.decode

        def timed_decode(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.decode_s += time.perf_counter() - start

        vae.decode = timed_decode  # both pipelines look `decode` up on the instance

    def reset(self):
        self.unet_calls, self.unet_first, self.unet_last, self.decode_s = 0, None, None, 0.0

    def _pre(self, module, args):
        if self.unet_first is None:
            self.unet_first = time.perf_counter()

    def _post(self, module, args, output):
        self.unet_calls += 1
        self.unet_last = time.perf_counter()

    @property
    def unet_s(self) -> float:
        return (self.unet_last - self.unet_first) if self.unet_first is not None else 0.0


# ---------------------------------------------------------------- the two pipelines
def ensure_model(folder: Path, width_divisor: int, max_layers: int | None) -> Path:
    if (folder / "decoder" / "model_index.json").is_file():
        return folder
    command = [sys.executable, "-m", "imagegen.build.kandinsky22", str(folder), "--parts", "decoder", "--dtype",
               "float32", "--width-divisor", str(width_divisor)]
    if max_layers:
        command += ["--max-layers", str(max_layers)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return folder


def load(folder: Path, attention: str = "auto"):
    """imagegen's pipeline, and diffusers' KandinskyV22Pipeline on the same U-Net and MoVQ objects."""
    from diffusers import DDPMScheduler, KandinskyV22Pipeline

    import imagegen

    pipe = imagegen.load_pipeline(str(folder), device="cpu", dtype="float32", attention=attention)
    scheduler = DDPMScheduler.from_config(pipe.decoder_scheduler.config)
    reference = KandinskyV22Pipeline(unet=pipe.unet, scheduler=scheduler, movq=pipe.vae)
    reference.set_progress_bar_config(disable=True)
    return pipe, reference


def embeddings(pipe, batch: int, seed: int):
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    dim = pipe.unet.config.encoder_hid_dim
    return torch.randn(batch, dim, generator=generator), torch.randn(batch, dim, generator=generator)


def run_imagegen(pipe, embeds, negative, seeds, settings):
    import torch

    with torch.inference_mode():
        latents = pipe.denoise(embeds, negative, seeds, settings)  # no progress bar, no callback
        return pipe.decode(latents)  # (B, H, W, 3) float in [0, 1]


def run_diffusers(reference, embeds, negative, seeds, settings):
    import torch

    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return reference(image_embeds=embeds, negative_image_embeds=negative, height=settings.height, width=settings.width,
                     num_inference_steps=settings.steps, guidance_scale=settings.guidance, generator=generators,
                     output_type="np").images


def mode_context(mode: str):
    import torch

    if mode == "autocast-bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compare_mode(pipe, reference, timer, mode: str, settings, images: int, repeats: int, seed: int = 0) -> dict:
    """Alternating runs of both pipelines in one mode; medians, ratio, equality, peaks."""
    from dataclasses import replace

    embeds, negative = embeddings(pipe, images, seed + 1000)
    seeds = [seed + i for i in range(images)]
    runners = {"imagegen": lambda s: run_imagegen(pipe, embeds, negative, seeds, s),
               "diffusers": lambda s: run_diffusers(reference, embeds, negative, seeds, s)}
    warm = replace(settings, steps=1)  # same shapes: oneDNN primitives and allocator pools get made here
    with mode_context(mode):
        for run in runners.values():
            run(warm)
    samples = {name: [] for name in runners}
    outputs = {}
    for index in range(repeats):
        # ABBA order (imagegen, diffusers, diffusers, imagegen, ...): a load that drifts during the run does not
        # favour whichever pipeline always goes first.
        for name in (list(runners) if index % 2 == 0 else list(runners)[::-1]):
            run = runners[name]
            timer.reset()
            with mode_context(mode), PeakRSS() as memory:
                start, cpu_start = time.perf_counter(), time.process_time()
                outputs[name] = run(settings)
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            samples[name].append(dict(wall=wall, cpu=cpu, unet_s=timer.unet_s, unet_calls=timer.unet_calls,
                                      decode_s=timer.decode_s, peak=memory.peak, before=memory.before))
    result = {"mode": mode, "repeats": repeats}
    for name, runs in samples.items():
        wall = statistics.median(r["wall"] for r in runs)
        unet_s = statistics.median(r["unet_s"] for r in runs)
        result[name] = dict(wall_s=wall, cpu_s=statistics.median(r["cpu"] for r in runs), s_per_image=wall / images,
                            unet_it_s=settings.steps / unet_s if unet_s else float("nan"),
                            unet_calls=runs[0]["unet_calls"], decode_s=statistics.median(r["decode_s"] for r in runs),
                            peak_rss=max(r["peak"] for r in runs),
                            peak_over_weights=max(r["peak"] - r["before"] for r in runs),
                            # what the two pipelines do differently: everything but the U-Net loop and the decode
                            outside_models_s=statistics.median(r["wall"] - r["unet_s"] - r["decode_s"] for r in runs),
                            walls=[r["wall"] for r in runs])
    result["ratio"] = result["imagegen"]["wall_s"] / result["diffusers"]["wall_s"]
    result["cpu_ratio"] = result["imagegen"]["cpu_s"] / result["diffusers"]["cpu_s"]
    result["max_abs_diff"] = float(abs(outputs["imagegen"] - outputs["diffusers"]).max())
    result["pixels"] = outputs["imagegen"]
    return result


def attention_costs(pipe, settings, seed: int = 0) -> dict:
    """`auto` (the default) vs `sdpa`: which backend each resolves to on this device, and one U-Net forward with
    the SDPA processors vs diffusers' classic ones."""
    import torch
    from diffusers.models.attention_processor import AttnAddedKVProcessor, AttnProcessor

    from imagegen.attention import attention_processor_names, resolve_attention

    out = {"auto_resolves_to": resolve_attention("auto", "cpu"), "sdpa_resolves_to": resolve_attention("sdpa", "cpu"),
           "processors": sorted(attention_processor_names(pipe.unet))}
    generator = torch.Generator("cpu").manual_seed(seed)
    factor = pipe.vae_scale_factor
    sample = torch.randn(2, pipe.unet.config.in_channels, settings.height // factor, settings.width // factor,
                         generator=generator)
    cond = {"image_embeds": torch.randn(2, pipe.unet.config.encoder_hid_dim, generator=generator)}
    original = dict(pipe.unet.attn_processors)
    classic = {name: AttnAddedKVProcessor() if "AddedKV" in type(p).__name__ else AttnProcessor()
               for name, p in original.items()}
    times, results = {}, {}
    try:
        with torch.inference_mode():
            for label, processors in (("sdpa", original), ("classic", classic), ("sdpa again", original)):
                pipe.unet.set_attn_processor(dict(processors))
                start = time.perf_counter()
                results[label] = pipe.unet(sample, 500, encoder_hidden_states=None, added_cond_kwargs=cond).sample
                times[label] = time.perf_counter() - start
    finally:
        pipe.unet.set_attn_processor(dict(original))
    out["unet_forward_s"] = {"sdpa": min(times["sdpa"], times["sdpa again"]), "classic": times["classic"]}
    out["classic_vs_sdpa_max_abs_diff"] = float((results["sdpa"] - results["classic"]).abs().max())
    return out


# ---------------------------------------------------------------- report
def gb(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def report(results: dict, out=sys.stdout) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    s = results["settings"]
    p(f"Kandinsky 2.2 decoder, random weights: U-Net {results['parameters']['unet'] / 1e9:.3f}B + MoVQ "
      f"{results['parameters']['movq'] / 1e6:.1f}M params; {s['width']}x{s['height']}, {s['steps']} steps, guidance "
      f"{s['guidance']}, {s['images']} image(s), {results['threads']} threads, median of {s['repeats']} alternating "
      "runs")
    p(f"{'mode':14s} {'pipeline':9s} {'s/image':>8s} {'U-Net it/s':>10s} {'decode s':>8s} {'other s':>8s} "
      f"{'peak RSS':>10s} {'+run':>10s}  ratio / max|diff|")
    for mode in results["modes"]:
        r = results["modes"][mode]
        if "skipped" in r:
            p(f"{mode:14s} skipped: {r['skipped']}")
            continue
        for name in ("imagegen", "diffusers"):
            x = r[name]
            tail = (f"  {r['ratio']:.3f} (cpu {r['cpu_ratio']:.3f}) / {r['max_abs_diff']:.2e}"
                    if name == "imagegen" else "")
            p(f"{mode:14s} {name:9s} {x['s_per_image']:8.2f} {x['unet_it_s']:10.3f} {x['decode_s']:8.2f} "
              f"{x['outside_models_s']:8.3f} {gb(x['peak_rss']):>10s} {gb(x['peak_over_weights']):>10s}{tail}")
    if "bf16_vs_fp32_max_abs_diff" in results:
        p(f"bfloat16 autocast vs float32 (imagegen pixels): max |diff| {results['bf16_vs_fp32_max_abs_diff']:.3e}")
    a = results.get("attention")
    if a:
        f = a["unet_forward_s"]
        p(f"attention: --attention auto -> {a['auto_resolves_to']}, sdpa -> {a['sdpa_resolves_to']} (same processors: "
          f"{', '.join(a['processors'])}); one U-Net forward (batch 2): SDPA {f['sdpa']:.2f} s, classic "
          f"{f['classic']:.2f} s (classic/SDPA {f['classic'] / f['sdpa']:.3f}), max |diff| "
          f"{a['classic_vs_sdpa_max_abs_diff']:.1e}")
    p(f"process peak RSS (ru_maxrss): {gb(results['ru_maxrss'])}")
    for mode, r in results["modes"].items():
        if "skipped" not in r:
            verdict = "ok" if r["ratio"] <= 1.0 and r["max_abs_diff"] <= EQUALITY_LIMIT else "NOT MET"
            p(f"RESULT {mode}: imagegen/diffusers wall-time ratio {r['ratio']:.3f} (goal <= 1.0), max |diff| "
              f"{r['max_abs_diff']:.2e} (goal <= {EQUALITY_LIMIT:g}), peak RSS imagegen {gb(r['imagegen']['peak_rss'])}"
              f" / diffusers {gb(r['diffusers']['peak_rss'])}: {verdict}")


def run(args) -> dict:
    import resource

    import torch

    from imagegen.settings import DecoderSettings

    folder = Path(args.folder or Path(tempfile.gettempdir()) / (
        f"imagegen-k22-decoder-w{args.width_divisor}-l{args.max_layers or 0}"))
    ensure_model(folder, args.width_divisor, args.max_layers)
    pipe, reference = load(folder)
    timer = StageTimer(pipe.unet, pipe.vae)
    settings = DecoderSettings(steps=args.steps, guidance=args.guidance, width=args.size, height=args.size)
    modes = args.modes.split(",") if args.modes else ["float32"] + (["autocast-bf16"] if native_bf16() else [])
    results = {"settings": dict(steps=args.steps, guidance=args.guidance, width=args.size, height=args.size,
                                images=args.images, repeats=args.repeats), "threads": torch.get_num_threads(),
               "folder": str(folder), "modes": {},
               "parameters": {n: sum(p.numel() for p in m.parameters()) for n, m in (("unet", pipe.unet),
                                                                                     ("movq", pipe.vae))}}
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode {unknown[0]!r}; use {', '.join(MODES)}")
    for mode in MODES:
        if mode in modes:
            results["modes"][mode] = compare_mode(pipe, reference, timer, mode, settings, args.images, args.repeats)
        elif mode == "autocast-bf16" and not args.modes:
            results["modes"][mode] = {"skipped": (
                "no avx512_bf16/amx_bf16 in this CPU's flags: bfloat16 matmuls and convolutions are emulated, many "
                "times slower than float32; force with --modes autocast-bf16")}
    ran = [m for m in MODES if m in modes]
    if len(ran) == 2:
        results["bf16_vs_fp32_max_abs_diff"] = float(abs(results["modes"][ran[0]]["pixels"]
                                                         - results["modes"][ran[1]]["pixels"]).max())
    if args.attention:
        results["attention"] = attention_costs(pipe, settings)
    results["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return results


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="model folder (built here with --parts decoder when missing)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=4, help="runs of each pipeline, in ABBA order (default 4)")
    parser.add_argument("--modes", help=f"comma list of {', '.join(MODES)} (default: float32, plus bf16 autocast "
                                        "where the CPU has native bf16)")
    parser.add_argument("--no-attention", dest="attention", action="store_false", help="skip the attention rows")
    parser.add_argument("--width-divisor", type=int, default=1, help="a narrower build (tests)")
    parser.add_argument("--max-layers", type=int, default=None, help="a shallower build (tests)")
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    results = run(args)
    report(results)
    if args.json:
        clean = {k: v for k, v in results.items() if k != "modes"}
        clean["modes"] = {m: {k: v for k, v in r.items() if k != "pixels"} for m, r in results["modes"].items()}
        Path(args.json).write_text(json.dumps(clean, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
