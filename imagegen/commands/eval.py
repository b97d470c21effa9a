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
}


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=int, default=100, help="prompts drawn from the shapes grammar (default 100)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per prompt (default 3: 300 prompt x seed pairs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt draw and of the first image (default 0)")
    p.add_argument("--steps", type=int, help="decoder steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="decoder guidance (default: the model's)")
    p.add_argument("--prior-steps", type=int)
    p.add_argument("--prior-guidance", type=float)
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

    for name in ("prompts", "seeds", "rerank"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be a whole number >= 1, got {getattr(args, name)}")
    check_seed("--seed", args.seed)
    if args.kind not in PROMPT_KINDS:
        raise UserError(f"unknown --kind {args.kind!r}; expected one of {', '.join(PROMPT_KINDS)}")
    from ..lora.requests import parse_spec
    from ..presets import find_preset

    loras = [parse_spec(spec) for spec in args.lora or []]
    preset = find_preset(args.model or DEFAULT_PRESET)
    prior = replace(preset.prior_defaults, **given(steps=args.prior_steps, guidance=args.prior_guidance))
    decoder = replace(preset.decoder_defaults, **given(steps=args.steps, guidance=args.guidance))
    prior.validate()
    decoder.validate()
    check_writable_folder(args.out)

    from ..evaluation.adherence import evaluate, grammar_prompts, write_report
    from ..loading import load_pipeline

    pipe = load_pipeline(args.model or DEFAULT_PRESET, device=args.device, dtype=args.dtype, attention=args.attention)
    prompts = grammar_prompts(args.prompts, args.seed, **PROMPT_KINDS[args.kind])
    report, images = evaluate(pipe, prompts, args.seeds, args.seed, prior=prior, decoder=decoder, rerank=args.rerank,
                              loras=loras)
    report.settings = {"model": pipe.model.name, "kind": args.kind, "prompts": args.prompts,
                       "seeds_per_prompt": args.seeds, "seed": args.seed, "rerank": args.rerank,
                       "loras": [{"name": r.name, "weights": r.weights, "window": list(r.window)} for r in loras],
                       "prior": asdict(prior), "decoder": asdict(decoder)}
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
