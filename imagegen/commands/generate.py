"""`imagegen generate` (also plain `imagegen "PROMPT"`): making images.

One input mode per call — a PROMPT, `--prompts-file`, `--mix`, `--variations-of` or `--from-png` — checked with
everything else before any model is loaded. `--from-png` makes the recorded image again, bit-exactly; with overrides
(`--steps`, `--seed`, `--lora`, a size, ...) it is the recorded generation with those changed, the way A1111 users
send a PNG to txt2img and change one thing.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from ..errors import UserError
from ..presets import DEFAULT_PRESET
from ..settings import ATTENTION_BACKENDS, DECODER_SCHEDULERS, DTYPES, PRIOR_SCHEDULERS
from .registry import command

INPUT_MODES = {"prompt": "PROMPT", "prompts_file": "--prompts-file", "mix": "--mix", "variations_of": "--variations-of",
               "from_png": "--from-png"}
DEFAULT_BATCH_SIZE = 8  # images per pipeline call for --prompts-file: ~0.18 s/image at 8 against 0.67 s alone
# (flag, PriorSettings or DecoderSettings field) of the options --from-png can override
PRIOR_OVERRIDES = {"prior_steps": "steps", "prior_guidance": "guidance", "prior_scheduler": "scheduler"}
DECODER_OVERRIDES = {"steps": "steps", "guidance": "guidance", "scheduler": "scheduler", "width": "width",
                     "height": "height"}


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", help="what to draw (or use --prompts-file, --mix, --variations-of, --from-png)")
    p.add_argument("-n", "--num-images", type=int, help="images per prompt, made in one batch (default 1)")
    p.add_argument("--seed", type=int, help="decoder seed of the first image; image i uses seed+i (default: random)")
    p.add_argument("--prior-seed", type=int, help="prior seed of the first image (default: the decoder seed)")
    p.add_argument("--negative", metavar="TEXT", help="negative prompt")
    p.add_argument("--steps", type=int, help="decoder denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="decoder classifier-free guidance scale")
    p.add_argument("--scheduler", help=f"decoder scheduler: {', '.join(DECODER_SCHEDULERS)}")
    p.add_argument("--prior-steps", type=int, help="prior denoising steps")
    p.add_argument("--prior-guidance", type=float, help="prior classifier-free guidance scale")
    p.add_argument("--prior-scheduler", help=f"prior scheduler: {', '.join(PRIOR_SCHEDULERS)}")
    p.add_argument("--width", type=int, help="image width in pixels (a multiple of the VAE factor)")
    p.add_argument("--height", type=int, help="image height in pixels")
    p.add_argument("--mix", action="append", metavar="ITEM[:WEIGHT]",
                   help="mix prompts and/or image files in image-embedding space, e.g. --mix 'a red circle:0.7' "
                        "--mix 'a blue square:0.3' (repeatable)")
    p.add_argument("--variations-of", metavar="IMAGE", help="make variations of an image (its CLIP image embedding)")
    p.add_argument("--lora", action="append", metavar="NAME[:WEIGHT]",
                   help="LoRA adapter by name ($IMAGEGEN_LORA_PATH, ./lora_adapters, the per-user folder, the package; "
                        "see 'imagegen lora list') or path, e.g. --lora heart:0.8 or "
                        "--lora heart:unet=1:prior=0.5:te=0; :start=F / :stop=F apply its U-Net part to that fraction "
                        "of the decoder steps only (repeatable); prompts may also say <lora:NAME:WEIGHT>")
    p.add_argument("--prompts-file", metavar="FILE", help="one prompt per line, all generated in one process")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help=f"images per pipeline call for --prompts-file (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--from-png", metavar="FILE",
                   help="make the image of an imagegen PNG again (bit-exact), or with the options given changed")
    p.add_argument("--rerank", type=int, metavar="N",
                   help="make N candidates per image and keep the one closest to the prompt in CLIP space")
    add_model_arguments(p)
    p.add_argument("--out", default="outputs", metavar="FOLDER", help="output folder (default outputs/)")
    p.add_argument("--json", action="store_true", help="print one JSON object per written image on stdout")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=f"preset name, preset .toml or model folder (default {DEFAULT_PRESET})")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--dtype", default=None, help=f"{', '.join(DTYPES)} (auto: float32 on CPU, float16 on CUDA)")
    p.add_argument("--attention", default="auto", help=f"{', '.join(ATTENTION_BACKENDS)} (auto: xformers on CUDA when it runs, else SDPA)")


def parse_mix_item(text: str):
    """'a red circle:0.7' -> text with weight; an existing image file -> image item. Weight defaults to 1."""
    from ..result import IMAGE_SUFFIXES, MixItem

    body, weight = text, 1.0
    if ":" in text:
        head, tail = text.rsplit(":", 1)
        try:
            body, weight = head, float(tail)
        except ValueError:
            pass
    path = Path(body)
    if path.suffix.lower() in IMAGE_SUFFIXES or path.is_file():
        return MixItem.from_file(path, weight)
    return MixItem(text=body, weight=weight)


def read_prompts_file(path: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file; a one-line error naming the line of anything else."""
    from ..result import check_prompt_text
    from ..textfile import read_utf8_lines

    lines = read_utf8_lines(path, "prompts file", "; save it as UTF-8")
    prompts = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            check_prompt_text(line.strip(), f"line {number} of {path!r}")
            prompts.append(line.strip())
    if not prompts:
        raise UserError(f"prompts file {path!r} has no prompts (expected one prompt per line)")
    return prompts


def input_mode(args) -> str:
    given = [name for name in INPUT_MODES if getattr(args, name) is not None]
    if len(given) > 1:
        raise UserError(f"give one of PROMPT, --prompts-file, --mix, --variations-of, --from-png; got "
                        f"{' and '.join(INPUT_MODES[name] for name in given)}")
    if not given:
        raise UserError("no prompt given: pass a non-empty PROMPT, --prompts-file, --mix, --variations-of or --from-png")
    if given[0] != "prompts_file" and args.batch_size is not None:
        raise UserError("--batch-size applies to --prompts-file only")
    return given[0]


def given(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def with_overrides(args, prior, decoder):
    """The settings with the fields the command line gives replaced, validated."""
    prior = replace(prior, **given(**{field: getattr(args, flag) for flag, field in PRIOR_OVERRIDES.items()}))
    decoder = replace(decoder, **given(**{field: getattr(args, flag) for flag, field in DECODER_OVERRIDES.items()}))
    prior.validate()
    decoder.validate()
    return prior, decoder


def generation_plan(args):
    """(model, runtime overrides, calls, keep): each call is the keyword arguments of one pipeline call; keep is the
    index of the image to keep from a --from-png batch. Everything is checked before any model is loaded."""
    from ..settings import check_seed

    mode = input_mode(args)
    check_seed("--seed", args.seed)
    check_seed("--prior-seed", args.prior_seed)
    for flag, value in (("-n", args.num_images), ("--rerank", args.rerank), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be a whole number >= 1, got {value}")
    if mode == "from_png":
        return from_png_plan(args)

    from ..lora.requests import parse_spec
    from ..presets import find_preset
    from ..settings import Limits

    preset = find_preset(args.model or DEFAULT_PRESET)
    prior, decoder = with_overrides(args, preset.prior_defaults, preset.decoder_defaults)
    per_image = (args.num_images or 1) * (args.rerank or 1)
    Limits.for_model(preset.decoder_defaults).check(decoder, per_image)
    common = dict(negative_prompt=args.negative or "", num_images=args.num_images or 1, seed=args.seed,
                  prior_seed=args.prior_seed, prior=prior, decoder=decoder,
                  loras=[parse_spec(spec) for spec in args.lora or []])
    if mode in ("mix", "variations_of"):
        return args.model, {}, [dict(common, mix=[parse_mix_item(m) for m in args.mix or [args.variations_of]])], None
    if mode == "prompt":
        if not args.prompt.strip():
            raise UserError("no prompt given: pass a non-empty PROMPT, --prompts-file, --mix, --variations-of or "
                            "--from-png")
        return args.model, {}, [dict(common, prompt=args.prompt)], None
    prompts = read_prompts_file(args.prompts_file)
    per_call = max(1, (args.batch_size or DEFAULT_BATCH_SIZE) // per_image)
    return args.model, {}, [dict(common, prompt=chunk) for chunk in prompt_batches(prompts, per_call)], None


def prompt_batches(prompts: list[str], size: int) -> list[list[str]]:
    """Consecutive prompts in batches of at most `size`; a batch also ends where the <lora:...> tags change (one
    pipeline call runs one set of adapters). The files come out in the order of the prompts."""
    from ..lora.requests import split_prompt

    batches, key = [], None
    for prompt in prompts:
        tags = split_prompt(prompt)[1]
        if not batches or len(batches[-1]) == size or tags != key:
            batches.append([])
        batches[-1].append(prompt)
        key = tags
    return batches


def from_png_plan(args):
    from ..lora.requests import parse_spec
    from ..png import read_record

    if args.num_images is not None or args.rerank is not None:
        raise UserError("--from-png makes the recorded image again: -n and --rerank do not apply (use --seed to vary)")
    record = read_record(args.from_png)
    prior, decoder = with_overrides(args, record.prior, record.decoder)
    changes = given(prior=None if prior == record.prior else prior, decoder=None if decoder == record.decoder else decoder,
                    seed=args.seed, prior_seed=args.prior_seed, negative_prompt=args.negative)
    runtime = given(device=record.device, dtype=record.dtype)
    if not changes and args.lora is None:  # the recorded batch again (rerank candidates included); keep its image
        return record.model_ref, runtime, [dict(record.batch_call(), rerank_of=record)], record.batch_index
    if args.seed is not None and args.prior_seed is None:
        changes["prior_seed"] = args.seed  # as on the command line: the prior seed follows the seed
    single = replace(record, batch_size=1, batch_index=0, rerank=None, **changes)
    call = single.batch_call()
    if args.lora is not None:
        call["loras"] = [parse_spec(spec) for spec in args.lora]
    return record.model_ref, runtime, [call], None


@command("generate", "make images from a prompt (the default command)", add_generate_arguments)
def run_generate(args) -> int:
    from ..png import check_writable_folder

    recorded_model, runtime, calls, keep = generation_plan(args)
    check_writable_folder(args.out)
    model = args.model or recorded_model or DEFAULT_PRESET
    device = args.device or runtime.get("device", "cpu")
    dtype = args.dtype or runtime.get("dtype", "auto")

    from .. import rerank
    from ..loading import load_pipeline
    from ..png import save_png

    pipe = load_pipeline(model, device=device, dtype=dtype, attention=args.attention)
    for call in calls:
        recorded = call.pop("rerank_of", None)
        if keep is None:
            result = rerank.generate(pipe, rerank=args.rerank or 1, **call)
            pairs = list(zip(result.images, result.records))
        else:  # --from-png: the recorded batch, keeping the recorded image and its record's reranking
            result = pipe(**call)
            pairs = [(result.images[keep], replace(result.records[keep], rerank=recorded.rerank))]
        for image, record in pairs:
            path = save_png(image, record, args.out)
            print(json.dumps({"path": str(path), **record.to_dict()}) if args.json else str(path), flush=True)
    return 0
