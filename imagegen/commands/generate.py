"""`imagegen generate` (also plain `imagegen "PROMPT"`) and `imagegen grid`: making images."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from ..presets import DEFAULT_PRESET
from ..settings import ATTENTION_BACKENDS, DECODER_SCHEDULERS, DTYPES, PRIOR_SCHEDULERS
from .registry import command


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", help="what to draw (or use --prompts-file, --mix, --variations-of, --from-png)")
    p.add_argument("-n", "--num-images", type=int, default=1, help="images per prompt, made in one batch (default 1)")
    p.add_argument("--seed", type=int, help="decoder seed of the first image; image i uses seed+i (default: random)")
    p.add_argument("--prior-seed", type=int, help="prior seed of the first image (default: the decoder seed)")
    p.add_argument("--negative", default="", metavar="TEXT", help="negative prompt")
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
                   help="LoRA adapter by name (lora_adapters/, $IMAGEGEN_LORA_PATH) or path, e.g. --lora heart:0.8 or "
                        "--lora heart:unet=1:prior=0.5:te=0; :start=F / :stop=F apply its U-Net part to that fraction "
                        "of the decoder steps only (repeatable); prompts may also say <lora:NAME:WEIGHT>")
    p.add_argument("--prompts-file", metavar="FILE", help="one prompt per line, all generated in one process")
    p.add_argument("--from-png", metavar="FILE", help="generate again the image a PNG of imagegen's records")
    p.add_argument("--rerank", type=int, default=1, metavar="N",
                   help="make N candidates per image and keep the one closest to the prompt in CLIP space")
    add_model_arguments(p)
    p.add_argument("--out", default="outputs", metavar="FOLDER", help="output folder (default outputs/)")
    p.add_argument("--json", action="store_true", help="print one JSON object per written image on stdout")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=f"preset name, preset .toml or model folder (default {DEFAULT_PRESET})")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--dtype", default="auto", help=f"{', '.join(DTYPES)} (auto: float32 on CPU, float16 on CUDA)")
    p.add_argument("--attention", default="auto", help=f"{', '.join(ATTENTION_BACKENDS)} (auto: xformers on CUDA when it runs, else SDPA)")


def parse_mix_item(text: str):
    """'a red circle:0.7' -> text with weight; an existing image file -> image item. Weight defaults to 1."""
    from ..result import MixItem

    body, weight = text, 1.0
    if ":" in text:
        head, tail = text.rsplit(":", 1)
        try:
            body, weight = head, float(tail)
        except ValueError:
            pass
    path = Path(body)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp") or path.is_file():
        return MixItem(image=load_image(path), weight=weight, image_path=str(path))
    return MixItem(text=body, weight=weight)


def load_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError):
        raise UserError(f"cannot read image {str(path)!r}; give a PNG, JPEG or WebP file") from None


def read_prompts_file(path: str) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise UserError(f"cannot read prompts file {path!r}: {err.strerror}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"prompts file {path!r} has no prompts (expected one prompt per line)")
    return prompts


def generation_jobs(args) -> list[dict]:
    """Each job is the keyword arguments of one pipeline call. Checked before any model is loaded."""
    from dataclasses import replace

    from ..presets import find_preset
    from ..settings import check_seed

    if args.from_png:
        return [from_png_job(args.from_png)]
    preset = find_preset(args.model or DEFAULT_PRESET)
    prior = replace(preset.prior_defaults, **given(steps=args.prior_steps, guidance=args.prior_guidance,
                                                    scheduler=args.prior_scheduler))
    decoder = replace(preset.decoder_defaults, **given(steps=args.steps, guidance=args.guidance,
                                                        scheduler=args.scheduler, width=args.width, height=args.height))
    prior.validate()
    decoder.validate()
    check_seed("--seed", args.seed)
    check_seed("--prior-seed", args.prior_seed)
    if args.num_images < 1:
        raise UserError(f"-n must be a whole number >= 1, got {args.num_images}")
    if args.rerank < 1:
        raise UserError(f"--rerank must be a whole number >= 1, got {args.rerank}")
    from ..lora.requests import parse_spec

    loras = [parse_spec(spec) for spec in args.lora or []]
    common = dict(negative_prompt=args.negative, num_images=args.num_images, seed=args.seed,
                  prior_seed=args.prior_seed, prior=prior, decoder=decoder, loras=loras)
    mix = [parse_mix_item(m) for m in args.mix or []]
    if args.variations_of:
        mix.append(parse_mix_item(args.variations_of))
    if mix:
        return [dict(common, mix=mix)]
    prompts = read_prompts_file(args.prompts_file) if args.prompts_file else []
    if args.prompt is not None:
        prompts.insert(0, args.prompt)
    if not prompts or not all(p.strip() for p in prompts):
        raise UserError("no prompt given: pass a non-empty PROMPT, --prompts-file, --mix, --variations-of or --from-png")
    return [dict(common, prompt=p) for p in prompts]


def given(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def from_png_job(path: str) -> dict:
    """The same call that made the PNG: its whole batch again (batches are bit-exact, single images may not be)."""
    from ..lora.requests import FULL_WINDOW, LoraRequest
    from ..png import read_record
    from ..result import MixItem, settings_from_record

    record = read_record(path)
    try:
        prior, decoder = settings_from_record(record)
        mix = [MixItem(text=m["text"], weight=m["weight"]) if "text" in m else
               MixItem(image=load_image(Path(m["image"])), weight=m["weight"], image_path=m["image"])
               for m in record["mix"]]
        return dict(model=record["model_ref"], negative_prompt=record["negative_prompt"], num_images=record["batch_size"],
                    seed=record["batch_seed"], prior_seed=record["batch_prior_seed"], prior=prior, decoder=decoder,
                    mix=mix, keep_index=record["batch_index"], runtime=(record["device"], record["dtype"]),
                    loras=[LoraRequest(r["path"], r["weights"], tuple(r.get("window", FULL_WINDOW)))
                           for r in record.get("loras", [])])
    except (KeyError, TypeError) as err:
        raise UserError(f"the imagegen metadata in {path!r} lacks {err}; it was not written by this version") from None


@command("generate", "make images from a prompt (the default command)", add_generate_arguments)
def run_generate(args) -> int:
    from ..png import check_writable_folder

    jobs = generation_jobs(args)
    check_writable_folder(args.out)
    recorded_model = jobs[0].pop("model", None)  # --from-png: the model that made the PNG
    model = args.model or recorded_model or DEFAULT_PRESET
    keep_index = jobs[0].pop("keep_index", None)
    device, dtype = args.device, args.dtype
    if "runtime" in jobs[0]:
        device, dtype = jobs[0].pop("runtime")

    from ..api import load_pipeline
    from ..png import save_png

    pipe = load_pipeline(model, device=device, dtype=dtype, attention=args.attention)
    for job in jobs:
        if keep_index is None:
            from .. import rerank

            result = rerank.generate(pipe, rerank=args.rerank, **job)
        else:  # --from-png: the recorded batch (all rerank candidates included), keeping the recorded image
            result = pipe(**job)
        images, records = result.images, result.records
        if keep_index is not None:
            images, records = [images[keep_index]], [records[keep_index]]
        for image, record in zip(images, records):
            path = save_png(image, record, args.out)
            print(json.dumps({"path": str(path), **record}) if args.json else str(path), flush=True)
    return 0


def add_grid_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts-file", required=True, metavar="FILE",
                   help="one prompt per line: one row each (its <lora:NAME:W> tags apply to that row only)")
    p.add_argument("--seeds", type=int, default=4, help="columns: seeds seed..seed+N-1 (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile", type=int, default=128, help="pixels per image in the sheet (default 128)")
    add_model_arguments(p)
    p.add_argument("--out", default="outputs/grid.png", metavar="FILE.png", help="the sheet (never overwritten)")


@command("grid", "a contact sheet: one row per prompt, one column per seed", add_grid_arguments)
def run_grid(args) -> int:
    import io

    from ..png import check_writable_folder, write_new_file
    from ..settings import check_seed

    prompts = read_prompts_file(args.prompts_file)
    if args.seeds < 1 or args.tile < 1:
        raise UserError(f"--seeds and --tile must be whole numbers >= 1, got {args.seeds} and {args.tile}")
    check_seed("--seed", args.seed)
    check_writable_folder(Path(args.out).parent)

    from ..api import load_pipeline
    from ..grid import prompt_grid

    pipe = load_pipeline(args.model or DEFAULT_PRESET, device=args.device, dtype=args.dtype, attention=args.attention)
    # Each row uses exactly the adapters its <lora:...> tags name (none: the base model), as A1111's prompt grids.
    rows = [(p, pipe(p, num_images=args.seeds, seed=args.seed, loras=[]).images) for p in prompts]
    buffer = io.BytesIO()
    prompt_grid(rows, tile=args.tile).save(buffer, format="PNG")
    print(write_new_file(args.out, buffer.getvalue()))
    return 0
