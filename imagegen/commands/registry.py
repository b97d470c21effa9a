"""The command registry: each module in imagegen/commands registers its commands with @command, and a usage
error is the same single line as every other bad input."""
from __future__ import annotations

import argparse
from collections.abc import Callable

from ..errors import UserError

COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}  # name -> (help, add_arguments, run), in help order


def command(name: str, help: str, add_arguments: Callable):
    def register(run):
        COMMANDS[name] = (help, add_arguments, run)
        return run
    return register


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see '{self.prog} --help')")
