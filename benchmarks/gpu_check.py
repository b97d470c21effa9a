"""The steps of benchmarks/gpu_check.sh, one per call; each appends its table rows (JSON lines) to --rows.

  env        torch / CUDA / xformers (found, not imported without CUDA) / diffusers versions
  build      the full-size random Kandinsky 2.2 (imagegen.build.kandinsky22, all parts) into --folder
  precision  the shipped `shapes` model in float16 and bfloat16 vs float32: pixel-oracle scores (within 2 points)
  attention  xformers vs SDPA on the full-size U-Net: max |diff|, ms per forward, xformers calls counted
  compile    torch.compile of the U-Net: ms per forward after warm-up vs eager; a LoRA hot swap (diffusers'
             enable_lora_hotswap) must not compile again (compiles counted by a wrapping backend)
  full       full-size K2.2, 25+25 steps at 512x512 and 768x768, batch 1 and 4: s/image, prior and decoder it/s,
             peak memory, imagegen vs diffusers' KandinskyV22PriorPipeline + KandinskyV22Pipeline on the same weights
  table      print every row, the published anchors and a last summary line

Every CUDA step on a machine without CUDA writes one "skipped: no CUDA" row and nothing else. `--device cpu
--smoke` runs a step's own code at toy size on the CPU instead (the script's CPU self-check, and the tests).
No GPU figure is ever estimated: a row holds what was measured in this run, or says why nothing was.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SKIPPED = "skipped: no CUDA"
POINTS = 2.0  # oracle scores of float16 / bfloat16 must be within this many points of float32's
ANCHORS = ("published anchors (not measured here): Kandinsky 2.2 prior+decoder, 50 steps combined ≈ 3.5 s on an "
           "A10G; SD 1.5 U-Net at 512x512 ≈ 31 it/s on an A100 with SDPA")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def default_folder(smoke: bool) -> Path:
    return Path(tempfile.gettempdir()) / ("imagegen-k22-smoke" if smoke else "imagegen-k22-full-float16")


# ---------------------------------------------------------------- rows
def row(step: str, what: str, value: str = "", verdict: str = "info") -> dict:
    return {"step": step, "what": what, "value": value, "verdict": verdict}


def write_rows(path: str | None, rows: list[dict]) -> None:
    for r in rows:
        print(f"[{r['step']}] {r['what']}: {r['value']} -> {r['verdict']}", flush=True)
    if path:
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


def read_rows(path: str) -> list[dict]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


def table(rows: list[dict], seconds: float | None = None) -> str:
    widths = [max([len(h)] + [len(r[k]) for r in rows]) for h, k in
              (("step", "step"), ("check", "what"), ("measured", "value"))]
    lines = [f"{'step':{widths[0]}s}  {'check':{widths[1]}s}  {'measured':{widths[2]}s}  verdict",
             "-" * (sum(widths) + 14)]
    lines += [f"{r['step']:{widths[0]}s}  {r['what']:{widths[1]}s}  {r['value']:{widths[2]}s}  {r['verdict']}"
              for r in rows]
    lines.append(ANCHORS)
    failed = [r for r in rows if r["verdict"].startswith("FAIL")]
    ok = sum(r["verdict"] == "ok" for r in rows)
    skipped = sum(r["verdict"].startswith("skipped") for r in rows)
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    status = "FAILED" if failed else "passed"
    lines.append(f"gpu_check {status}: {ok} ok, {len(failed)} failed, {skipped} skipped{took}")
    return "\n".join(lines)


def verdict_within(score: float, reference: float, points: float = POINTS) -> str:
    return "ok" if abs(score - reference) <= points else f"FAIL: {score - reference:+.1f} points"


# ---------------------------------------------------------------- helpers
def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int = 1):
    """(median seconds, last result) of fn() over repeats, synchronising CUDA around each."""
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated()
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Span:
    """Wall time from a module's first forward start to its last forward end, and its number of calls."""

    def __init__(self, module, device: str):
        self.device, self.first, self.last, self.calls = device, None, None, 0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def reset(self):
        self.first, self.last, self.calls = None, None, 0

    def _pre(self, module, args):
        if self.first is None:
            sync(self.device)
            self.first = time.perf_counter()

    def _post(self, module, args, output):
        sync(self.device)
        self.last, self.calls = time.perf_counter(), self.calls + 1

    def rate(self, steps: int) -> float:
        return steps / (self.last - self.first) if self.first is not None and self.last > self.first else float("nan")


class CountingBackend:
    """A torch.compile backend that counts how often dynamo hands it a graph (each is a compile)."""

    def __init__(self, inner: str = "inductor"):
        self.inner, self.compiles = inner, 0

    def __call__(self, graph, example_inputs):
        self.compiles += 1
        if self.inner == "eager":
            return graph.forward
        from torch._dynamo import lookup_backend

        return lookup_backend(self.inner)(graph, example_inputs)


def random_lora(unet, seed: int, rank: int = 8) -> dict:
    """A random rank-`rank` LoRA state dict (peft key format) on the U-Net's attention projections."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    torch.manual_seed(seed)
    model = copy.deepcopy(unet)
    if model.dtype != torch.float32 or model.device.type != "cpu":
        model.to("cpu", torch.float32)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights=False)
    inject_adapter_in_model(config, model, adapter_name="x")
    state = get_peft_model_state_dict(model, adapter_name="x")
    del model
    return state


# ---------------------------------------------------------------- steps
def step_env(args) -> list[dict]:
    import diffusers
    import torch

    rows = [row("env", "torch / diffusers", f"{torch.__version__} / {diffusers.__version__}")]
    if not torch.cuda.is_available():
        found = importlib.util.find_spec("xformers") is not None
        rows.append(row("env", "CUDA", "not available", SKIPPED))
        rows.append(row("env", "xformers", "installed (not imported without CUDA)" if found else "not installed"))
        return rows
    props = torch.cuda.get_device_properties(0)
    rows.append(row("env", "GPU", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"))
    from imagegen.attention import xformers_usable

    if importlib.util.find_spec("xformers") is None:
        rows.append(row("env", "xformers", "not installed", "FAIL: pip install 'imagegen[gpu]'"))
    else:
        import xformers

        usable = xformers_usable()
        rows.append(row("env", "xformers", f"{xformers.__version__}, {'runs' if usable else 'does not run'}",
                        "ok" if usable else "FAIL: xformers does not run with this torch/GPU"))
    return rows


def build_folder(args) -> Path:
    from imagegen.build.kandinsky22 import REAL, Scale, save_kandinsky22

    folder = Path(args.folder) if args.folder else default_folder(args.smoke)
    if not (folder / "prior" / "model_index.json").is_file() or not (folder / "decoder" / "model_index.json").is_file():
        scale = Scale(32, 1) if args.smoke else REAL
        dtype = "float32" if args.device == "cpu" else "float16"
        save_kandinsky22(folder, "all", dtype, scale, seed=0, device=args.device)
    return folder


def step_build(args) -> list[dict]:
    if args.device.startswith("cuda") and not cuda():
        return [row("build", "full-size random K2.2 (all parts)", "", SKIPPED)]
    from imagegen.build.kandinsky22 import read_build_record

    start = time.perf_counter()
    folder = build_folder(args)
    record = read_build_record(folder)
    total = sum(sum(p["parameters"].values()) for p in record["parts"].values())
    size = f"{total / 1e9:.2f}B" if total >= 1e9 else f"{total / 1e6:.1f}M"
    return [row("build", f"random K2.2 {'(toy scale)' if args.smoke else '(all parts, full size)'}",
                f"{size} params, {record['dtype']}, {time.perf_counter() - start:.0f} s", "ok")]


def step_precision(args) -> list[dict]:
    if args.device.startswith("cuda") and not cuda():
        return [row("precision", "shipped model fp16/bf16 vs fp32 (oracle)", "", SKIPPED)]
    import imagegen
    from imagegen.evaluation import adherence

    dtypes = args.dtypes or (("float32", "bfloat16") if args.device == "cpu" else ("float32", "float16", "bfloat16"))
    count, seeds = (2, 1) if args.smoke else (args.prompts, args.seeds)
    prompts = adherence.grammar_prompts(count, seed=7)
    scores, rows = {}, []
    for dtype in dtypes:
        pipe = imagegen.load_pipeline("shapes", device=args.device, dtype=dtype)
        prior, decoder = pipe.model.prior_defaults, pipe.model.decoder_defaults
        if args.smoke:
            prior, decoder = replace(prior, steps=3), replace(decoder, steps=3)
        start = time.perf_counter()
        report, _ = adherence.evaluate(pipe, prompts, seeds, base_seed=0, prior=prior, decoder=decoder, progress=False)
        seconds = time.perf_counter() - start
        scores[dtype] = 100 * report.all_correct
        verdict = "info" if dtype == "float32" else verdict_within(scores[dtype], scores["float32"])
        rows.append(row("precision", f"shapes on {args.device}, {dtype}: oracle all-attributes",
                        f"{scores[dtype]:.1f} % of {report.pairs} images, {seconds / report.pairs:.3f} s/image",
                        verdict))
        del pipe
    return rows


def step_attention(args) -> list[dict]:
    if not cuda():
        return [row("attention", "xformers vs SDPA, full-size U-Net", "", SKIPPED)]
    import torch

    import imagegen
    from imagegen.attention import apply_attention, resolve_attention

    resolve_attention("xformers", "cuda")  # a clear error when xformers is missing or does not run
    import xformers.ops

    folder = build_folder(args)
    pipe = imagegen.load_pipeline(str(folder), device="cuda", dtype="float16", attention="sdpa")
    unet = pipe.unet
    g = torch.Generator("cuda").manual_seed(0)
    sample = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16, generator=g)  # 512x512, guided batch
    embeds = torch.randn(2, unet.config.encoder_hid_dim, device="cuda", dtype=torch.float16, generator=g)
    cond = {"image_embeds": embeds}
    forward = lambda: unet(sample, 500, encoder_hidden_states=None, added_cond_kwargs=cond).sample  # noqa: E731
    with torch.inference_mode():
        forward()
        sdpa_s, sdpa_out = timed(forward, "cuda", 10)
        apply_attention([pipe.prior, unet, pipe.vae], "xformers")
        calls = [0]
        original = xformers.ops.memory_efficient_attention

        def counted(*a, **k):
            calls[0] += 1
            return original(*a, **k)

        xformers.ops.memory_efficient_attention = counted
        try:
            forward()
            calls[0] = 0
            xf_s, xf_out = timed(forward, "cuda", 10)
        finally:
            xformers.ops.memory_efficient_attention = original
    diff = (sdpa_out.float() - xf_out.float()).abs().max().item()  # NaN (non-finite outputs) fails below
    per_forward = calls[0] / 10
    return [row("attention", "U-Net forward 512x512 batch 2 fp16: SDPA / xformers",
                f"{sdpa_s * 1e3:.1f} / {xf_s * 1e3:.1f} ms (xformers/SDPA {xf_s / sdpa_s:.3f})", "info"),
            row("attention", "max |xformers - SDPA| (U-Net output)", f"{diff:.2e}",
                "ok" if diff < 5e-2 else "FAIL"),
            row("attention", "xformers calls per U-Net forward", f"{per_forward:.0f}",
                "ok" if per_forward > 0 else "FAIL: xformers was not called")]


def unet_for_compile(args):
    """(U-Net, its call's keyword inputs) for the compile step: --compile-model shapes (the shipped model's, the
    default on CUDA), tiny (imagegen.build.tiny's, the default on the CPU) or full (the random full-size K2.2's)."""
    import torch

    which = args.compile_model or ("tiny" if args.device == "cpu" else "shapes")
    dtype = torch.float32 if args.device == "cpu" else torch.float16
    if which == "tiny":
        from imagegen.build.tiny import tiny_decoder_components

        unet = tiny_decoder_components()["unet"].to(args.device, dtype).eval().requires_grad_(False)
    else:
        import imagegen

        model = "shapes" if which == "shapes" else str(build_folder(args))
        unet = imagegen.load_pipeline(model, device=args.device, dtype=str(dtype).split(".")[1]).unet
    side = {"tiny": 16, "shapes": 8}.get(which, 64)  # latents: the trained 64x64 (shapes), 512x512 (full)
    g = torch.Generator(args.device).manual_seed(0)
    config = unet.config
    inputs = dict(sample=torch.randn(8, config.in_channels, side, side, device=args.device, dtype=dtype, generator=g),
                  timestep=500, added_cond_kwargs={"image_embeds": torch.randn(
                      8, config.encoder_hid_dim, device=args.device, dtype=dtype, generator=g)},
                  encoder_hidden_states=None)
    if config.encoder_hid_dim_type == "text_image_proj":  # a decoder that also reads the prompt's token states
        inputs["encoder_hidden_states"] = torch.randn(8, 16, config.encoder_hid_dim, device=args.device, dtype=dtype,
                                                      generator=g)
    return unet, inputs, which


def step_compile(args) -> list[dict]:
    if args.device.startswith("cuda") and not cuda():
        return [row("compile", "torch.compile U-Net speed-up; LoRA hot swap without recompiling", "", SKIPPED)]
    import torch

    backend_name = "eager" if args.device == "cpu" else "inductor"
    rows = []
    unet, inputs, which = unet_for_compile(args)
    where = f"{which} U-Net, {args.device} {'fp32' if args.device == 'cpu' else 'fp16'}, backend {backend_name}"
    call = lambda f: f(**inputs).sample  # noqa: E731
    with torch.inference_mode():
        call(unet)
        eager_s, eager_out = timed(lambda: call(unet), args.device, 10)
        counter = CountingBackend(backend_name)
        compiled = torch.compile(unet, backend=counter)
        start = time.perf_counter()
        call(compiled)
        warm_s = time.perf_counter() - start
        compiled_s, compiled_out = timed(lambda: call(compiled), args.device, 10)
    diff = (eager_out.float() - compiled_out.float()).abs().max().item()
    rows.append(row("compile", f"U-Net forward eager / compiled after warm-up ({where})",
                    f"{eager_s * 1e3:.2f} / {compiled_s * 1e3:.2f} ms: speed-up {eager_s / compiled_s:.2f}x "
                    f"(first call {warm_s:.1f} s, {counter.compiles} graph(s), max |diff| {diff:.1e})", "info"))
    rows.append(hotswap_check(args, where, backend_name))
    return rows


def hotswap_check(args, where: str, backend_name: str) -> dict:
    """Compile a U-Net holding adapter A and hot-swap in adapter B (same targets and rank): no new compile, and the
    output changes. With the eager backend, adapter C is then loaded the plain way: that must compile again (the
    counter does see recompiles)."""
    import torch

    torch._dynamo.reset()
    unet, inputs, _ = unet_for_compile(args)
    first, second, third = (random_lora(unet, seed) for seed in (1, 2, 3))  # same targets, same rank
    unet.enable_lora_hotswap(target_rank=8)
    unet.load_lora_adapter(first, adapter_name="swap", prefix=None)
    counter = CountingBackend(backend_name)
    compiled = torch.compile(unet, backend=counter)
    call = lambda: compiled(**inputs).sample  # noqa: E731
    with torch.inference_mode():
        call()
        before_out = call()
    before = counter.compiles
    unet.load_lora_adapter(second, adapter_name="swap", prefix=None, hotswap=True)
    with torch.inference_mode():
        after_out = call()
    swapped = counter.compiles - before
    changed = (after_out.float() - before_out.float()).abs().max().item()
    plain = None
    if backend_name == "eager":  # the counter's own check; with inductor it would cost a second full compile
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft: "Already found a peft_config attribute": two adapters, on purpose
            unet.load_lora_adapter(third, adapter_name="plain", prefix=None)
        unet.set_adapters(["plain"])
        with torch.inference_mode():
            call()
        plain = counter.compiles - before - swapped
    if swapped:
        verdict = f"FAIL: {swapped} recompile(s) after the hot swap"
    elif changed == 0:
        verdict = "FAIL: the swap did not change the output"
    elif plain == 0:
        verdict = "FAIL: a plain adapter load did not recompile either: the counter sees nothing"
    else:
        verdict = "ok"
    control = "" if plain is None else f"; a plain load of another adapter: {plain} recompile(s)"
    return row("compile", f"LoRA hot swap on the compiled U-Net ({where})",
               f"{swapped} recompile(s) after the hot swap (output changed by {changed:.2e}){control}", verdict)


def step_full(args) -> list[dict]:
    if args.device.startswith("cuda") and not cuda():
        return [row("full", "full-size K2.2 25+25 steps, 512/768, batch 1/4 vs diffusers", "", SKIPPED)]
    import numpy as np
    import torch
    from diffusers import DDPMScheduler, KandinskyV22Pipeline, KandinskyV22PriorPipeline, UnCLIPScheduler

    import imagegen
    from imagegen.settings import DecoderSettings, PriorSettings

    folder = build_folder(args)
    dtype = "float32" if args.device == "cpu" else "float16"
    pipe = imagegen.load_pipeline(str(folder), device=args.device, dtype=dtype, attention=args.attention)
    prior_pipe = KandinskyV22PriorPipeline(prior=pipe.prior, image_encoder=pipe.image_encoder,
                                           text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                           scheduler=UnCLIPScheduler.from_config(pipe.prior_scheduler.config),
                                           image_processor=pipe.image_processor)
    decoder_pipe = KandinskyV22Pipeline(unet=pipe.unet, movq=pipe.vae,
                                        scheduler=DDPMScheduler.from_config(pipe.decoder_scheduler.config))
    for p in (prior_pipe, decoder_pipe):
        p.set_progress_bar_config(disable=True)
    prior_span, unet_span = Span(pipe.prior, args.device), Span(pipe.unet, args.device)
    prompt, seed = "a red fox in the snow, oil painting", 42
    steps, prior_steps = args.steps, args.prior_steps

    def run_imagegen(size, batch, n_steps, n_prior):
        return pipe(prompt, seed=seed, num_images=batch, prior=PriorSettings(steps=n_prior, guidance=4.0),
                    decoder=DecoderSettings(steps=n_steps, guidance=4.0, width=size, height=size),
                    progress=False).pixels

    def run_diffusers(size, batch, n_steps, n_prior):
        gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
        embeds = prior_pipe(prompt, num_images_per_prompt=batch, num_inference_steps=n_prior, guidance_scale=4.0,
                            generator=gens)
        gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
        return decoder_pipe(image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds,
                            height=size, width=size, num_inference_steps=n_steps, guidance_scale=4.0,
                            generator=gens, output_type="np").images

    rows = [row("full", "model", f"{folder.name} ({dtype}, attention {pipe.attention_backend})")]
    for size in args.sizes:
        for batch in args.batches:
            results = {}
            for name, run in (("imagegen", run_imagegen), ("diffusers", run_diffusers)):
                run(size, batch, 1, 2)  # warm-up at the same shapes (the unCLIP prior needs 2 steps or more)
                prior_span.reset()
                unet_span.reset()
                peak_reset(args.device)
                seconds, pixels = timed(lambda: run(size, batch, steps, prior_steps), args.device)
                results[name] = dict(s=seconds, pixels=pixels, prior=prior_span.rate(prior_steps),
                                     decoder=unet_span.rate(steps), peak=peak_bytes(args.device))
                r = results[name]
                rows.append(row("full", f"{name} {size}x{size} batch {batch}, {prior_steps}+{steps} steps",
                                f"{r['s'] / batch:.3f} s/image, prior {r['prior']:.1f} it/s, decoder "
                                f"{r['decoder']:.2f} it/s, peak {r['peak'] / 2**30:.2f} GiB"))
            ratio = results["imagegen"]["s"] / results["diffusers"]["s"]
            diff = float(abs(results["imagegen"]["pixels"] - results["diffusers"]["pixels"]).max())
            limit = 1e-4 if dtype == "float32" else 2e-2
            finite = all(np.isfinite(r["pixels"]).all() for r in results.values())
            if not finite:
                verdict = "FAIL: non-finite pixels"
            elif not diff <= limit:
                verdict = f"FAIL: outputs differ by more than {limit:g}"
            elif ratio > 1.05 and not args.smoke:  # toy runs take milliseconds: their ratio is noise
                verdict = "FAIL: imagegen slower than diffusers"
            else:
                verdict = "ok"
            rows.append(row("full", f"imagegen/diffusers {size}x{size} batch {batch}",
                            f"wall ratio {ratio:.3f}, max |diff| {diff:.1e}", verdict))
    return rows


STEPS = {"env": step_env, "build": step_build, "precision": step_precision, "attention": step_attention,
         "compile": step_compile, "full": step_full}


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=[*STEPS, "table", "row"])
    parser.add_argument("--rows", help="JSON-lines file the rows are appended to (table: read from)")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu with --smoke")
    parser.add_argument("--smoke", action="store_true", help="toy sizes (the CPU self-check)")
    parser.add_argument("--folder", help="the random K2.2 folder (default: in the temp folder)")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--prior-steps", type=int, default=None)
    parser.add_argument("--dtypes", type=lambda s: tuple(s.split(",")), default=None,
                        help="precision: the dtypes, float32 first (default float32,float16,bfloat16 on CUDA)")
    parser.add_argument("--compile-model", choices=("shapes", "tiny", "full"), default=None,
                        help="compile: which U-Net (default: shapes on CUDA, tiny on the CPU)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=None, help="table: total time to print")
    parser.add_argument("--as-step", default="", help="row: the step column")
    parser.add_argument("--what", default="")
    parser.add_argument("--value", default="")
    parser.add_argument("--verdict", default="info")
    args = parser.parse_args(argv)
    if args.device != "cpu" and args.smoke:
        parser.error("--smoke runs on the CPU: add --device cpu")
    small = args.smoke
    args.sizes = args.sizes or ([64] if small else [512, 768])
    args.batches = args.batches or ([1, 2] if small else [1, 4])
    args.steps = args.steps or (2 if small else 25)
    args.prior_steps = args.prior_steps or (2 if small else 25)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.step == "table":
        print(table(read_rows(args.rows), args.seconds))
        return 1 if any(r["verdict"].startswith("FAIL") for r in read_rows(args.rows)) else 0
    if args.step == "row":
        write_rows(args.rows, [row(args.as_step, args.what, args.value, args.verdict)])
        return 0
    label = f"{args.step}{' (cpu smoke)' if args.smoke else ''}"
    if args.smoke:
        import torch

        torch.set_num_threads(1)  # toy-sized ops: extra threads only wait on each other (and on a busy machine)
    try:
        rows = STEPS[args.step](args)
    except Exception as err:  # a step that breaks is a failed row, and the others still run
        rows = [row(args.step, "error", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:160],
                    "FAIL")]
    if args.smoke:
        for r in rows:
            r["step"] = label
    write_rows(args.rows, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
