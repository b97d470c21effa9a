"""`imagegen grid`: a contact sheet, one row per prompt and one column per seed."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..presets import DEFAULT_PRESET
from .generate import add_model_arguments, read_prompts_file
from .registry import command


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

    from ..locations import existing_or_shipped

    prompts = read_prompts_file(str(existing_or_shipped(args.prompts_file)))
    if args.seeds < 1 or args.tile < 1:
        raise UserError(f"--seeds and --tile must be whole numbers >= 1, got {args.seeds} and {args.tile}")
    check_seed("--seed", args.seed)
    check_writable_folder(Path(args.out).parent)

    from ..grid import prompt_grid
    from ..loading import load_pipeline

    pipe = load_pipeline(args.model or DEFAULT_PRESET, device=args.device or "cpu", dtype=args.dtype or "auto",
                         attention=args.attention)
    # Each row uses exactly the adapters its <lora:...> tags name (none: the base model), as A1111's prompt grids.
    rows = [(p, pipe(p, num_images=args.seeds, seed=args.seed, loras=[]).images) for p in prompts]
    buffer = io.BytesIO()
    prompt_grid(rows, tile=args.tile).save(buffer, format="PNG")
    print(write_new_file(args.out, buffer.getvalue()))
    return 0
