"""`imagegen lora list|inspect|convert`, `imagegen make-dataset` and `imagegen train-lora`."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import UserError
from ..presets import DEFAULT_PRESET
from .registry import OneLineParser, command


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


@command("lora", "list, inspect and convert LoRA adapter files", add_lora_arguments)
def run_lora(args) -> int:
    from ..lora import files

    if args.lora_command == "list":
        rows = [files.describe(path).as_dict() for path in files.available().values()]
        for row in rows:
            del row["metadata"]
        if args.json:
            for row in rows:
                print(json.dumps(row))
            return 0
        print(f"{'NAME':<16} {'COMPONENTS':<22} {'RANK':<26} {'BASE':<10} {'TRIGGERS':<20} SIZE")
        for r in rows:
            ranks = ",".join(f"{k}={v}" for k, v in r["ranks"].items()) or "?"
            print(f"{r['name']:<16} {','.join(r['components']):<22} {ranks:<26} {r['base_model']:<10} "
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
    from ..lora.convert import convert_to_kohya

    print(convert_to_kohya(path, Path(args.output), args.model or DEFAULT_PRESET))
    return 0


DATASETS = ("heart", "outline", "shapes", "by-shape", "by-colour", "by-background", "by-size", "by-position")


def add_make_dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=DATASETS, help="heart: filled hearts ('a red heart ...'); outline: the five base "
                                                  "shapes drawn as 3-px outlines ('a red outlined circle ...'); "
                                                  "shapes: the base world, e.g. as regularization images; "
                                                  "by-ATTRIBUTE: renders in one subfolder per class, for classify --eval")
    p.add_argument("out", metavar="OUT", help="the folder to write (new or empty): PNG + .txt pairs and metadata.jsonl")
    p.add_argument("--count", type=int, default=256, help="images (default 256)")
    p.add_argument("--seed", type=int, default=0)


@command("make-dataset", "write a captioned demonstration dataset from the shapes world, for train-lora", add_make_dataset_arguments)
def run_make_dataset(args) -> int:
    from ..data import shapes
    from ..settings import check_seed

    if args.count < 1:
        raise UserError(f"--count must be a whole number >= 1, got {args.count}")
    check_seed("--seed", args.seed)
    try:
        if args.kind.startswith("by-"):
            from ..evaluation.labelled import write_labelled_folders

            folder = write_labelled_folders(args.out, args.count, args.seed, args.kind.removeprefix("by-"))
        else:
            kind = {"heart": dict(shapes=("heart",)), "outline": dict(shapes=shapes.SHAPES, style="outline"),
                    "shapes": dict(shapes=shapes.SHAPES)}[args.kind]
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
                   help="what gets LoRA layers: some of unet,prior,text_encoder,vae (default unet,prior); vae = the VAE "
                        "decoder, trained to redraw the images from their latents (for fine detail the base VAE loses)")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank (default 4)")
    p.add_argument("--alpha", type=float, help="LoRA alpha; the update is scaled by alpha / rank (default: the rank)")
    p.add_argument("--conv-rank", type=int, default=0, metavar="N",
                   help="also put LoRA on the U-Net's ResNet convolutions at rank N, as kohya's LoCon conv_dim "
                        "(default 0: attention only)")
    p.add_argument("--vae-batch-size", type=int, default=8, metavar="N",
                   help="with the vae component: examples of each batch it decodes (default 8; decoding costs more "
                        "than a U-Net step)")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps (default 500)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    p.add_argument("--lr-scheduler", default="constant", metavar="{constant,cosine,linear}",
                   help="learning-rate schedule; cosine and linear decay to 0 at the last step (default constant)")
    p.add_argument("--lr-warmup-steps", type=int, default=0, metavar="N",
                   help="steps of linear warm-up from 0 to --lr (default 0)")
    p.add_argument("--ema-decay", type=float, default=0.0, metavar="D",
                   help="write an exponential moving average of the LoRA weights with this decay, e.g. 0.995 "
                        "(default 0: the last weights)")
    p.add_argument("--min-snr-gamma", type=float, default=5.0, metavar="G",
                   help="Min-SNR-gamma loss weighting of the U-Net (Hang et al. 2023, kohya's --min_snr_gamma); 0: "
                        "plain MSE, which weighs the low-noise steps (fine detail) more (default 5)")
    p.add_argument("--min-timestep", type=int, default=0, metavar="T",
                   help="the U-Net learns on timesteps from T (default 0)")
    p.add_argument("--max-timestep", type=int, metavar="T",
                   help="... up to T, exclusive (default: all the scheduler's, e.g. 1000); a style trained on the "
                        "low-noise end leaves the base model's composition alone")
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


@command("train-lora", "train a LoRA adapter on a folder of captioned images (accelerate launch for several processes)", add_train_lora_arguments)
def run_train_lora(args) -> int:
    import os

    options = dict(data=args.data, name=args.name, base=args.base, rank=args.rank, alpha=args.alpha,
                   conv_rank=args.conv_rank, vae_batch_size=args.vae_batch_size,
                   components=tuple(c.strip() for c in args.components.split(",") if c.strip()), steps=args.steps,
                   lr=args.lr, lr_scheduler=args.lr_scheduler, lr_warmup_steps=args.lr_warmup_steps,
                   ema_decay=args.ema_decay, snr_gamma=args.min_snr_gamma, min_timestep=args.min_timestep,
                   max_timestep=args.max_timestep,
                   batch_size=args.batch_size, grad_accum=args.grad_accum, seed=args.seed,
                   mixed_precision=(args.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")).lower(),
                   resolution=args.resolution, save_every=args.save_every, resume=args.resume,
                   validation_prompts=tuple(args.validation_prompt or ()), validation_every=args.validation_every,
                   triggers=tuple(args.trigger or ()), out=args.out, overwrite=args.overwrite, skip_bad=args.skip_bad)
    rank = int(os.environ.get("RANK", "0"))
    if rank:  # one data-parallel run: the main process speaks for all
        logging.getLogger("imagegen").setLevel(logging.ERROR)
    try:
        from ..train.lora import LoraOptions, train_lora

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
