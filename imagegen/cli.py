"""The `imagegen` command. `imagegen "PROMPT"` is short for `imagegen generate "PROMPT"`.

The subcommands live in imagegen/commands/; importing them loads only argparse and small modules, so that
`imagegen --help` and `imagegen models` answer at once (torch alone costs ~1.7 s).
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
# One module per command, named after it; importing one registers its command.
from .commands import (batch, classify, generate, grid, lora, make_dataset, models, score, serve,  # noqa: F401
                       train_base, train_lora)
from .commands import eval as eval_command  # noqa: F401
from .commands.registry import COMMANDS, OneLineParser
from .errors import UserError

HELP_ORDER = ("generate", "batch", "grid", "models", "serve", "eval", "lora", "train-lora", "make-dataset", "classify",
              "score", "train-base")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="imagegen",
        description="Text-to-image with an unCLIP diffusion model: CLIP text encoder -> diffusion prior -> latent "
                    "U-Net decoder -> VAE. 'imagegen \"PROMPT\"' is short for 'imagegen generate \"PROMPT\"'.",
    )
    parser.add_argument("--version", action="version", version=f"imagegen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in sorted(COMMANDS, key=lambda n: HELP_ORDER.index(n) if n in HELP_ORDER else len(HELP_ORDER)):
        help_text, add_arguments, _ = COMMANDS[name]
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
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
        args.argv = argv  # the command line as read (train-lora starts its data-parallel workers with it)
        if args.command is None:
            parser.print_help()
            return 0
        return COMMANDS[args.command][2](args) or 0
    except UserError as err:
        print(f"imagegen: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imagegen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
