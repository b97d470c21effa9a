"""`imagegen eval`: prompt adherence of a shapes-world model, read by the pixel oracle."""
from __future__ import annotations

import argparse
import json

from ..errors import UserError
from ..presets import DEFAULT_PRESET
from .generate import add_model_arguments, given
from .registry import command

# --kind -> the grammar_prompts arguments: which shapes and which drawing style the prompts ask for.
PROMPT_KINDS = {
    "base": {},
    "heart": {"shape_names": ("heart",)},
    "outline": {"style": "outline"},
    "short": {},  # "a {colour} {shape}" only (adherence.short_prompts)
}
DEFAULT_COUNTS = {False: (100, 3), True: (24, 16)}  # (--prompts, --seeds) without and with --diversity


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=int, help="prompts drawn from the shapes grammar (default 100; 24 with "
                                               "--diversity)")
    p.add_argument("--seeds", type=int, help="seeds per prompt (default 3: 300 prompt x seed pairs; 16 with "
                                             "--diversity)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt draw and of the first image (default 0)")
    p.add_argument("--diversity", action="store_true",
                   help="measure seed diversity instead: per attribute a prompt leaves free, the entropy of the "
                        "oracle's readings over the seeds against the generator's own (1 = as varied as the data), "
                        "and the rate of invisible shapes; prompts state each optional attribute half the time")
    p.add_argument("--min-iou", type=float, help="the oracle's no-shape threshold: the best template's IoU below which "
                                                 "it reads no shape (default: oracle.MIN_IOU; 0: none)")
    p.add_argument("--steps", type=int, help="decoder steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="decoder guidance (default: the model's)")
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("START", "STOP"),
                   help="decoder guidance only on the steps from START to STOP (fractions of the loop; default 0 1)")
    p.add_argument("--guidance-rescale", type=float, help="decoder guidance rescale, 0 to 1 (default 0)")
    p.add_argument("--prior-steps", type=int)
    p.add_argument("--prior-guidance", type=float)
    p.add_argument("--prior-guidance-interval", type=float, nargs=2, metavar=("START", "STOP"))
    p.add_argument("--prior-guidance-rescale", type=float)
    p.add_argument("--prior-noise", type=float, help="x the prior's starting noise (default 1)")
    p.add_argument("--rerank", type=int, default=1, metavar="N", help="keep the best of N candidates by CLIP score")
    p.add_argument("--kind", default="base", metavar="KIND",
                   help=f"which prompts: {', '.join(PROMPT_KINDS)} (default base: the base model's grammar; heart and "
                        "outline: the concepts of the example adapters)")
    p.add_argument("--lora", action="append", metavar="NAME[:WEIGHT]",
                   help="LoRA adapter to apply to every generation (repeatable), as in generation")
    add_model_arguments(p)
    p.add_argument("--out", default="outputs/eval", metavar="FOLDER", help="where adherence.json and the grid go")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


@command("eval", "measure prompt adherence of a shapes-world model with the pixel oracle", add_eval_arguments)
def run_eval(args) -> int:
    from dataclasses import asdict, replace

    from ..png import check_writable_folder
    from ..settings import check_seed

    defaults = DEFAULT_COUNTS[args.diversity]
    args.prompts = defaults[0] if args.prompts is None else args.prompts
    args.seeds = defaults[1] if args.seeds is None else args.seeds
    for name in ("prompts", "seeds", "rerank"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be a whole number >= 1, got {getattr(args, name)}")
    check_seed("--seed", args.seed)
    if args.kind not in PROMPT_KINDS:
        raise UserError(f"unknown --kind {args.kind!r}; expected one of {', '.join(PROMPT_KINDS)}")
    if args.diversity and args.rerank > 1:
        raise UserError("--diversity measures the seeds themselves; it takes no --rerank")
    from ..evaluation import oracle
    from ..lora.requests import parse_spec
    from ..presets import find_preset

    min_iou = oracle.MIN_IOU if args.min_iou is None else args.min_iou
    if not 0 <= min_iou <= 1:
        raise UserError(f"--min-iou must be from 0 to 1, got {min_iou}")
    loras = [parse_spec(spec) for spec in args.lora or []]
    preset = find_preset(args.model or DEFAULT_PRESET)
    prior_interval = args.prior_guidance_interval or (None, None)
    decoder_interval = args.guidance_interval or (None, None)
    prior = replace(preset.prior_defaults, **given(
        steps=args.prior_steps, guidance=args.prior_guidance, guidance_start=prior_interval[0],
        guidance_stop=prior_interval[1], guidance_rescale=args.prior_guidance_rescale, noise=args.prior_noise))
    decoder = replace(preset.decoder_defaults, **given(
        steps=args.steps, guidance=args.guidance, guidance_start=decoder_interval[0], guidance_stop=decoder_interval[1],
        guidance_rescale=args.guidance_rescale))
    prior.validate()
    decoder.validate()
    check_writable_folder(args.out)

    from ..evaluation import adherence, diversity
    from ..loading import load_pipeline

    pipe = load_pipeline(args.model or DEFAULT_PRESET, device=args.device or "cpu", dtype=args.dtype or "auto",
                         attention=args.attention)
    draw = (adherence.short_prompts if args.kind == "short" else
            diversity.diversity_prompts if args.diversity else adherence.grammar_prompts)
    prompts = draw(args.prompts, args.seed, **PROMPT_KINDS[args.kind])
    settings = {"model": pipe.model.name, "kind": args.kind, "prompts": args.prompts, "seeds_per_prompt": args.seeds,
                "seed": args.seed, "min_iou": min_iou,
                "loras": [{"name": r.name, "weights": r.weights, "window": list(r.window)} for r in loras],
                "prior": asdict(prior), "decoder": asdict(decoder)}
    if args.diversity:
        return _run_diversity(args, pipe, prompts, prior, decoder, loras, settings, min_iou)
    report, images = adherence.evaluate(pipe, prompts, args.seeds, args.seed, prior=prior, decoder=decoder,
                                        rerank=args.rerank, loras=loras, min_iou=min_iou)
    report.settings = {**settings, "rerank": args.rerank}
    json_path, grid_path = adherence.write_report(args.out, report, images)
    if args.json:
        print(json.dumps({**report.summary(), "report": str(json_path), "grid": str(grid_path)}))
    else:
        raw = report.without_min_iou["accuracy"]
        print(f"{report.pairs} prompt x seed pairs, {report.seconds:.0f} s; oracle no-shape threshold IoU {min_iou:g} "
              f"({report.no_shape:.1%} of the images read as no shape)")
        print(f"  {'':<10} {'accuracy':>8}  {'w/o threshold':>13}")
        for name, value in report.accuracy.items():
            print(f"  {name:<10} {value:8.1%}  {raw[name]:13.1%}  (n={report.counts[name]})")
        print(f"  {'all':<10} {report.all_correct:8.1%}  {report.without_min_iou['all_attributes']:13.1%}")
        print(f"report: {json_path}\ngrid:   {grid_path}")
    return 0


def _run_diversity(args, pipe, prompts, prior, decoder, loras, settings, min_iou) -> int:
    from ..evaluation import diversity

    report, images = diversity.evaluate(pipe, prompts, args.seeds, args.seed, prior=prior, decoder=decoder,
                                        loras=loras, min_iou=min_iou)
    report.settings = settings
    json_path, grid_path = diversity.write_report(args.out, report, images)
    if args.json:
        print(json.dumps({**report.summary(), "report": str(json_path), "grid": str(grid_path)}))
        return 0
    print(f"{report.images} images ({len(prompts)} prompts x {args.seeds} seeds), {report.seconds:.0f} s")
    print(f"  {'free':<10} {'entropy':>7} {'vs data':>7} {'pooled':>7} {'prompts':>7}  (1 = as varied as the data)")
    for name, stats in report.attributes.items():
        print(f"  {name:<10} {stats['normalized_entropy']:7.2f} {stats['vs_data']:7.2f} {stats['pooled']:7.2f} "
              f"{stats['prompts']:7d}")
    print(f"  invisible shapes (shape colour = background colour): {report.invisible:.1%}; no shape: "
          f"{report.no_shape:.1%}")
    print(f"report: {json_path}\ngrid:   {grid_path}")
    return 0
