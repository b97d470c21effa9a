"""The `imagegen` command. `imagegen "PROMPT"` is short for `imagegen generate "PROMPT"`.

Only argparse and small modules are imported at start-up: torch and diffusers load inside the commands that use
them, so `imagegen --help` and `imagegen models` answer at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import UserError
from .presets import DEFAULT_PRESET
from .settings import ATTENTION_BACKENDS, DECODER_SCHEDULERS, DTYPES, PRIOR_SCHEDULERS

COMMANDS = {}  # name -> (help, add_arguments, run)


def command(name: str, help: str):
    def register(fn):
        COMMANDS[name] = (help, fn)
        return fn
    return register


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is the same single line as every other bad input."""

    def error(self, message):
        raise UserError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------- generate
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
                        "--lora heart:unet=1:prior=0.5:te=0 (repeatable); prompts may also say <lora:NAME:WEIGHT>")
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
    from .result import MixItem

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

    from .presets import find_preset
    from .settings import check_seed

    if args.from_png:
        return [from_png_job(args.from_png)]
    preset = find_preset(args.model or DEFAULT_PRESET)
    prior = replace(preset.prior_defaults, **_given(steps=args.prior_steps, guidance=args.prior_guidance,
                                                    scheduler=args.prior_scheduler))
    decoder = replace(preset.decoder_defaults, **_given(steps=args.steps, guidance=args.guidance,
                                                        scheduler=args.scheduler, width=args.width, height=args.height))
    prior.validate()
    decoder.validate()
    check_seed("--seed", args.seed)
    check_seed("--prior-seed", args.prior_seed)
    if args.num_images < 1:
        raise UserError(f"-n must be a whole number >= 1, got {args.num_images}")
    if args.rerank < 1:
        raise UserError(f"--rerank must be a whole number >= 1, got {args.rerank}")
    from .lora.requests import parse_spec

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


def _given(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def from_png_job(path: str) -> dict:
    """The same call that made the PNG: its whole batch again (batches are bit-exact, single images may not be)."""
    from .lora.requests import LoraRequest
    from .png import read_record
    from .result import MixItem, settings_from_record

    record = read_record(path)
    try:
        prior, decoder = settings_from_record(record)
        mix = [MixItem(text=m["text"], weight=m["weight"]) if "text" in m else
               MixItem(image=load_image(Path(m["image"])), weight=m["weight"], image_path=m["image"])
               for m in record["mix"]]
        return dict(model=record["model_ref"], negative_prompt=record["negative_prompt"], num_images=record["batch_size"],
                    seed=record["batch_seed"], prior_seed=record["batch_prior_seed"], prior=prior, decoder=decoder,
                    mix=mix, keep_index=record["batch_index"], runtime=(record["device"], record["dtype"]),
                    loras=[LoraRequest(r["path"], r["weights"]) for r in record.get("loras", [])])
    except (KeyError, TypeError) as err:
        raise UserError(f"the imagegen metadata in {path!r} lacks {err}; it was not written by this version") from None


@command("generate", "make images from a prompt (the default command)")
def run_generate(args) -> int:
    from .png import check_writable_folder

    jobs = generation_jobs(args)
    check_writable_folder(args.out)
    recorded_model = jobs[0].pop("model", None)  # --from-png: the model that made the PNG
    model = args.model or recorded_model or DEFAULT_PRESET
    keep_index = jobs[0].pop("keep_index", None)
    device, dtype = args.device, args.dtype
    if "runtime" in jobs[0]:
        device, dtype = jobs[0].pop("runtime")

    from .api import load_pipeline
    from .png import save_png

    pipe = load_pipeline(model, device=device, dtype=dtype, attention=args.attention)
    for job in jobs:
        if keep_index is None:
            from . import rerank

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


# ---------------------------------------------------------------- eval
def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=int, default=100, help="prompts drawn from the shapes grammar (default 100)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per prompt (default 3: 300 prompt x seed pairs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt draw and of the first image (default 0)")
    p.add_argument("--steps", type=int, help="decoder steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="decoder guidance (default: the model's)")
    p.add_argument("--prior-steps", type=int)
    p.add_argument("--prior-guidance", type=float)
    p.add_argument("--rerank", type=int, default=1, metavar="N", help="keep the best of N candidates by CLIP score")
    add_model_arguments(p)
    p.add_argument("--out", default="outputs/eval", metavar="FOLDER", help="where adherence.json and the grid go")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


@command("eval", "measure prompt adherence of a shapes-world model with the pixel oracle")
def run_eval(args) -> int:
    from dataclasses import replace

    from .png import check_writable_folder
    from .settings import check_seed

    for name in ("prompts", "seeds", "rerank"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be a whole number >= 1, got {getattr(args, name)}")
    check_seed("--seed", args.seed)
    check_writable_folder(args.out)

    from .api import load_pipeline
    from .evaluation.adherence import evaluate, grammar_prompts, write_report

    pipe = load_pipeline(args.model or DEFAULT_PRESET, device=args.device, dtype=args.dtype, attention=args.attention)
    prior, decoder = pipe.model.prior_defaults, pipe.model.decoder_defaults
    prior = replace(prior, **_given(steps=args.prior_steps, guidance=args.prior_guidance))
    decoder = replace(decoder, **_given(steps=args.steps, guidance=args.guidance))
    prompts = grammar_prompts(args.prompts, args.seed)
    report, images = evaluate(pipe, prompts, args.seeds, args.seed, prior=prior, decoder=decoder, rerank=args.rerank)
    report.settings = {"model": pipe.model.name, "prompts": args.prompts, "seeds_per_prompt": args.seeds,
                       "seed": args.seed, "rerank": args.rerank, "prior": vars_of(prior), "decoder": vars_of(decoder)}
    json_path, grid_path = write_report(args.out, report, images)
    if args.json:
        print(json.dumps({**report.summary(), "report": str(json_path), "grid": str(grid_path)}))
    else:
        print(f"{report.pairs} prompt x seed pairs, {report.seconds:.0f} s")
        for name, value in report.accuracy.items():
            print(f"  {name:<10} {value:6.1%}  (n={report.counts[name]})")
        print(f"  {'all':<10} {report.all_correct:6.1%}")
        print(f"report: {json_path}\ngrid:   {grid_path}")
    return 0


def vars_of(settings) -> dict:
    from dataclasses import asdict

    return asdict(settings)


# ---------------------------------------------------------------- grid
def add_grid_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts-file", required=True, metavar="FILE", help="one prompt per line: one row each")
    p.add_argument("--seeds", type=int, default=4, help="columns: seeds seed..seed+N-1 (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile", type=int, default=128, help="pixels per image in the sheet (default 128)")
    add_model_arguments(p)
    p.add_argument("--out", default="outputs/grid.png", metavar="FILE.png", help="the sheet (never overwritten)")


@command("grid", "a contact sheet: one row per prompt, one column per seed")
def run_grid(args) -> int:
    import io

    from .png import check_writable_folder, write_new_file
    from .settings import check_seed

    prompts = read_prompts_file(args.prompts_file)
    if args.seeds < 1 or args.tile < 1:
        raise UserError(f"--seeds and --tile must be whole numbers >= 1, got {args.seeds} and {args.tile}")
    check_seed("--seed", args.seed)
    check_writable_folder(Path(args.out).parent)

    from .api import load_pipeline
    from .grid import prompt_grid

    pipe = load_pipeline(args.model or DEFAULT_PRESET, device=args.device, dtype=args.dtype, attention=args.attention)
    rows = [(p, pipe(p, num_images=args.seeds, seed=args.seed).images) for p in prompts]
    buffer = io.BytesIO()
    prompt_grid(rows, tile=args.tile).save(buffer, format="PNG")
    print(write_new_file(args.out, buffer.getvalue()))
    return 0


# ---------------------------------------------------------------- lora
def add_lora_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="lora_command", metavar="ACTION", parser_class=OneLineParser, required=True)
    listing = sub.add_parser("list", help="the adapters found (lora_adapters/, $IMAGEGEN_LORA_PATH)")
    listing.add_argument("--json", action="store_true")
    inspect = sub.add_parser("inspect", help="every metadata field of one adapter")
    inspect.add_argument("name", help="adapter name or .safetensors path")
    inspect.add_argument("--json", action="store_true")
    convert = sub.add_parser("convert", help="write an adapter in kohya format (lora_unet_/lora_te_ keys)")
    convert.add_argument("name", help="adapter name or .safetensors path")
    convert.add_argument("output", help="the new .safetensors file (must not exist)")
    convert.add_argument("--model", default=None, help=f"the base model whose module names map keys (default {DEFAULT_PRESET})")


@command("lora", "list, inspect and convert LoRA adapter files")
def run_lora(args) -> int:
    from .lora import files

    if args.lora_command == "list":
        rows = [files.describe(path).as_dict() for path in files.available().values()]
        for row in rows:
            del row["metadata"]
        if args.json:
            for row in rows:
                print(json.dumps(row))
            return 0
        print(f"{'NAME':<16} {'COMPONENTS':<28} {'RANK':<18} {'BASE':<10} {'TRIGGERS':<20} SIZE")
        for r in rows:
            ranks = ",".join(f"{k}={v}" for k, v in r["ranks"].items()) or "?"
            print(f"{r['name']:<16} {','.join(r['components']):<28} {ranks:<18} {r['base_model']:<10} "
                  f"{','.join(r['trigger_words']):<20} {r['size_bytes'] / 1024:.0f} KiB")
        return 0
    path = files.find(args.name)
    if args.lora_command == "inspect":
        info = files.describe(path).as_dict()
        info["lora_hash"] = files.tensor_hash(path)
        if args.json:
            print(json.dumps(info))
        else:
            for key, value in info.items():
                if key != "metadata":
                    print(f"{key}: {value}")
            for key, value in sorted(info["metadata"].items()):
                print(f"  {key}: {value}")
        return 0
    from .lora.convert import convert_to_kohya

    print(convert_to_kohya(path, Path(args.output), args.model or DEFAULT_PRESET))
    return 0


# ---------------------------------------------------------------- train-base
def add_train_base_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/train/shapes.toml", help="training recipe (TOML)")
    p.add_argument("--out", help="model folder to write, e.g. imagegen/weights/shapes (prior/ and decoder/)")
    p.add_argument("--resume", action="store_true", help="continue the run: skip finished stages, resume the current")
    p.add_argument("--smoke", action="store_true", help="~5 steps per stage, an end-to-end check of the code")


@command("train-base", "train the embedded shapes model from scratch: CLIP -> VAE -> prior -> decoder")
def run_train_base(args) -> int:
    from .train.run import main as train_main

    argv = ["--config", args.config] + (["--out", args.out] if args.out else [])
    return train_main(argv + ["--resume"] * args.resume + ["--smoke"] * args.smoke)


# ---------------------------------------------------------------- make-dataset and train-lora
DATASETS = ("heart", "outline")


def add_make_dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=DATASETS, help="heart: filled hearts ('a red heart ...'); outline: the five base "
                                                  "shapes drawn as 3-px outlines ('a red outlined circle ...')")
    p.add_argument("out", metavar="OUT", help="the folder to write (new or empty): PNG + .txt pairs and metadata.jsonl")
    p.add_argument("--count", type=int, default=256, help="images (default 256)")
    p.add_argument("--seed", type=int, default=0)


@command("make-dataset", "write a captioned demonstration dataset from the shapes world, for train-lora")
def run_make_dataset(args) -> int:
    from .data import shapes
    from .settings import check_seed

    if args.count < 1:
        raise UserError(f"--count must be a whole number >= 1, got {args.count}")
    check_seed("--seed", args.seed)
    kind = dict(shapes=("heart",)) if args.kind == "heart" else dict(shapes=shapes.SHAPES, style="outline")
    try:
        folder = shapes.write_dataset(args.out, args.count, args.seed, **kind)
    except (ValueError, OSError) as err:
        raise UserError(str(err)) from None
    print(folder)
    return 0


def add_train_lora_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help="folder of images with same-name .txt captions (kohya), or with a "
                                                "metadata.jsonl of file_name and text (Hugging Face imagefolder)")
    p.add_argument("--name", required=True, help="adapter name: writes OUT/NAME.safetensors")
    p.add_argument("--base", default=DEFAULT_PRESET, metavar="MODEL",
                   help=f"base model: preset name, preset .toml or model folder (default {DEFAULT_PRESET})")
    p.add_argument("--components", default="unet,prior",
                   help="what gets LoRA layers: some of unet,prior,text_encoder (default unet,prior)")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank (default 4)")
    p.add_argument("--alpha", type=float, help="LoRA alpha; the update is scaled by alpha / rank (default: the rank)")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps (default 500)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=4, help="examples per step and process (default 4)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the LoRA init, example order, noise (default 0)")
    p.add_argument("--mixed-precision", default=None, metavar="{no,bf16}",
                   help="bf16 autocast (~20x slower on CPUs without AVX-512 BF16; default no, or accelerate's)")
    p.add_argument("--resolution", type=int, help="train at this square size (default: the model's width x height)")
    p.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps (default 100)")
    p.add_argument("--resume", metavar="latest|PATH", help="continue from the newest checkpoint or a checkpoint folder")
    p.add_argument("--validation-prompt", action="append", metavar="TEXT",
                   help="prompt of the validation grid (repeatable): base model and adapter side by side")
    p.add_argument("--validation-every", type=int, default=0, metavar="N",
                   help="write a validation grid every N steps (default 0: after the last step only)")
    p.add_argument("--trigger", action="append", metavar="WORD", help="trigger word stored in the adapter (repeatable)")
    p.add_argument("--out", default="lora_adapters", metavar="FOLDER",
                   help="where the adapter goes (default lora_adapters/)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an adapter of that name (the old file stays until the new one is complete)")
    p.add_argument("--skip-bad", action="store_true", help="train without unreadable images instead of stopping")


@command("train-lora", "train a LoRA adapter on a folder of captioned images (accelerate launch for several processes)")
def run_train_lora(args) -> int:
    import os

    options = dict(data=args.data, name=args.name, base=args.base, rank=args.rank, alpha=args.alpha,
                   components=tuple(c.strip() for c in args.components.split(",") if c.strip()), steps=args.steps,
                   lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum, seed=args.seed,
                   mixed_precision=(args.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")).lower(),
                   resolution=args.resolution, save_every=args.save_every, resume=args.resume,
                   validation_prompts=tuple(args.validation_prompt or ()), validation_every=args.validation_every,
                   triggers=tuple(args.trigger or ()), out=args.out, overwrite=args.overwrite, skip_bad=args.skip_bad)
    rank = int(os.environ.get("RANK", "0"))
    if rank:  # one data-parallel run: the main process speaks for all
        logging.getLogger("imagegen").setLevel(logging.ERROR)
    try:
        from .train.lora import LoraOptions, train_lora

        result = train_lora(LoraOptions(**options))
    except UserError:
        if rank:
            return 2  # the main process reports it
        raise
    if rank:
        return 130 if result.interrupted else 0
    for path in result.validation_images:
        print(f"validation grid: {path}", file=sys.stderr)
    if result.interrupted:
        print(f"imagegen: stopped at step {result.steps}; checkpoint {result.checkpoint}; continue with the same "
              "command and --resume latest", file=sys.stderr)
        return 130
    speed = f", {result.seconds_per_step:.3f} s/step" if result.seconds_per_step else ""
    loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    print(f"{result.adapter}  ({result.steps} steps{speed}{loss})")
    return 0


# ---------------------------------------------------------------- classify and score
def add_clip_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip", default=DEFAULT_PRESET, metavar="BACKEND",
                   help=f"the CLIP to use: a model preset or folder (its own CLIP pair; default {DEFAULT_PRESET}), "
                        "open_clip:ARCH/PRETRAINED, open_clip:hf-hub:ORG/REPO, or open_clip:ARCH with --checkpoint")
    p.add_argument("--checkpoint", metavar="FILE.safetensors", help="weights for --clip open_clip:ARCH")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable and non-image files with a warning")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")


def add_classify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", metavar="IMAGES_OR_FOLDERS", help="image files and folders (walked recursively)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", help="class names, comma-separated: 'red circle,blue square'")
    labels.add_argument("--labels-file", metavar="FILE", help="class names, one per line")
    prompts = p.add_mutually_exclusive_group()
    prompts.add_argument("--templates", metavar="FILE",
                         help="prompt templates, one per line, each with {} for the class name (default: a built-in "
                              "ensemble such as 'a photo of a {}.')")
    prompts.add_argument("--cupl", metavar="FILE.json",
                         help="CuPL prompts, a JSON object {class name: [prompt, ...]}; without labels its keys are the classes")
    p.add_argument("--top-k", type=int, default=1, help="labels shown per image, best first (default 1)")
    p.add_argument("--eval", metavar="FOLDER",
                   help="measure acc@1, acc@5 and mean per-class recall on FOLDER (one subfolder of images per class)")
    p.add_argument("--out", default="outputs/classify", metavar="FOLDER",
                   help="where --eval writes its confusion-matrix PNG and JSON report (default outputs/classify)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object per image (with --eval: the report)")
    output.add_argument("--csv", action="store_true", help="CSV rows: path, rank, label, probability")
    add_clip_arguments(p)


def check_batch_size(args) -> None:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a whole number >= 1, got {args.batch_size}")


def classify_prompts(args, labels: list[str] | None):
    """(class names, templates or CuPL prompts) from --labels/--labels-file and --templates/--cupl."""
    from .classify import zeroshot

    if args.cupl:
        return zeroshot.read_cupl_file(args.cupl, labels)
    if labels is None:
        raise UserError("no labels: give --labels 'red circle,blue square', --labels-file FILE or --cupl FILE.json")
    templates = zeroshot.read_templates_file(args.templates) if args.templates else zeroshot.DEFAULT_TEMPLATES
    return labels, templates


@command("classify", "zero-shot CLIP classification of images, or its accuracy on a labelled folder (--eval)")
def run_classify(args) -> int:
    from .classify import zeroshot

    check_batch_size(args)
    if args.eval:
        return run_classify_eval(args)
    if not args.images:
        raise UserError("no images given: pass image files or folders (or --eval FOLDER)")
    if args.top_k < 1:
        raise UserError(f"--top-k must be a whole number >= 1, got {args.top_k}")
    labels = (zeroshot.read_labels_file(args.labels_file) if args.labels_file
              else zeroshot.parse_labels(args.labels) if args.labels is not None else None)
    labels, templates = classify_prompts(args, labels)

    from .classify.run import classify, collect_images

    files = collect_images(args.images, args.skip_bad)

    from .classify.backends import load_backend

    backend = load_backend(args.clip, args.checkpoint, args.device)
    predictions = classify(backend, files, labels, templates, args.top_k, args.batch_size, args.skip_bad)
    if args.json:
        for p in predictions:
            print(json.dumps({**p.as_dict(), "clip": backend.name}))
    elif args.csv:
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "rank", "label", "probability"])
        for p in predictions:
            for rank, (label, probability) in enumerate(zip(p.labels, p.probabilities), 1):
                writer.writerow([p.path, rank, label, f"{probability:.6f}"])
    else:
        width = max([len("IMAGE")] + [len(p.path) for p in predictions])
        print(f"{'IMAGE':<{width}}  {'PROB':>6}  LABEL")
        for p in predictions:
            for rank, (label, probability) in enumerate(zip(p.labels, p.probabilities)):
                print(f"{p.path if rank == 0 else '':<{width}}  {probability:6.1%}  {label}")
    return 0


def run_classify_eval(args) -> int:
    from .classify import zeroshot
    from .png import check_writable_folder, write_new_file

    if args.images or args.labels or args.labels_file:
        raise UserError("--eval takes its classes from the subfolders of FOLDER; give no images or labels with it")
    if args.csv:
        raise UserError("--eval reports as text or --json, not --csv")
    check_writable_folder(args.out)

    from .classify.run import evaluate, labelled_images

    classes, files, targets = labelled_images(args.eval, args.skip_bad)
    _, templates = classify_prompts(args, classes)

    from .classify.backends import load_backend
    from .classify.report import confusion_png

    backend = load_backend(args.clip, args.checkpoint, args.device)
    result = evaluate(backend, classes, files, targets, templates, args.batch_size, args.skip_bad)
    png = write_new_file(Path(args.out) / "confusion.png", confusion_png(result))
    report = {**result.summary(), "folder": str(args.eval), "clip": backend.name, "confusion_png": str(png),
              "templates": templates if isinstance(templates, dict) else list(templates)}
    report_path = write_new_file(Path(args.out) / "classify-eval.json", json.dumps(report, indent=2).encode())
    if args.json:
        print(json.dumps({**report, "report": str(report_path)}))
        return 0
    print(f"{result.images} images, {len(classes)} classes, CLIP {backend.name}")
    print(f"  acc@1                  {result.accuracy:6.1%}")
    print(f"  acc@{result.top_k:<18} {result.accuracy_top_k:6.1%}")
    print(f"  mean per-class recall  {result.mean_class_recall:6.1%}")
    print(f"confusion matrix: {png}\nreport:           {report_path}")
    return 0


def add_score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files and folders (walked recursively)")
    p.add_argument("--prompt", required=True, help="the text the images are scored against")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    add_clip_arguments(p)


@command("score", "CLIP score of images against a prompt: 100 x max(cosine, 0)")
def run_score(args) -> int:
    check_batch_size(args)
    if not args.prompt.strip():
        raise UserError("--prompt is empty; give the text to score the images against")

    from .classify.run import collect_images, score_files

    files = collect_images(args.images, args.skip_bad)

    from .classify.backends import load_backend

    backend = load_backend(args.clip, args.checkpoint, args.device)
    for path, score in score_files(backend, files, args.prompt, args.batch_size, args.skip_bad):
        print(json.dumps({"path": path, "clip_score": score, "prompt": args.prompt, "clip": backend.name})
              if args.json else f"{score:7.2f}  {path}")
    return 0


# ---------------------------------------------------------------- models
@command("models", "list the model presets")
def run_models(args) -> int:
    from .presets import list_presets

    presets = list_presets()
    if args.json:
        for p in presets:
            print(json.dumps({"name": p.name, "prior": p.prior, "decoder": p.decoder, "available": p.availability(),
                              "description": p.description, "source": p.source}))
        return 0
    width = max([len(p.name) for p in presets] + [4])
    print(f"{'NAME':<{width}}  {'STATUS':<8} DESCRIPTION")
    for p in presets:
        default = " (default)" if p.name == DEFAULT_PRESET else ""
        print(f"{p.name:<{width}}  {p.availability():<8} {p.description}{default}")
    return 0


def add_models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per preset")


# ---------------------------------------------------------------- entry point
ARGUMENTS = {"generate": add_generate_arguments, "models": add_models_arguments, "eval": add_eval_arguments,
             "grid": add_grid_arguments, "lora": add_lora_arguments,
             "train-base": add_train_base_arguments, "classify": add_classify_arguments,
             "make-dataset": add_make_dataset_arguments, "train-lora": add_train_lora_arguments,
             "score": add_score_arguments}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="imagegen",
        description="Text-to-image with an unCLIP diffusion model: CLIP text encoder -> diffusion prior -> latent "
                    "U-Net decoder -> VAE. 'imagegen \"PROMPT\"' is short for 'imagegen generate \"PROMPT\"'.",
    )
    parser.add_argument("--version", action="version", version=f"imagegen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name, (help_text, _) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        ARGUMENTS[name](sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "generate")  # `imagegen "a red circle"` and `imagegen --from-png F`
    parser = build_parser()
    logging.addLevelName(logging.WARNING, "warning")
    logging.basicConfig(format="imagegen: %(levelname)s: %(message)s", level=logging.WARNING)
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return COMMANDS[args.command][1](args) or 0
    except UserError as err:
        print(f"imagegen: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imagegen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
