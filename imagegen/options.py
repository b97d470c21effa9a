"""Options declared once: the fields of a dataclass are also the command-line options of the command that fills it.

A field made with `option(...)` holds its type and default (as any dataclass field) and, in its metadata, the help
text and how it is spelt on the command line; a field without a help text is not on the command line:

    @dataclass
    class RunOptions:
        data: str = option(help="the training images", positional=True, metavar="DATA")
        rank: int = option(4, "LoRA rank (default %(default)s)")
        components: tuple = option(("unet", "prior"), "what gets LoRA layers (default %(default)s)", parse=comma_list)
        triggers: tuple = option((), "trigger word (repeatable)", flag="--trigger", repeat=True, metavar="WORD")
        weight_decay: float = 1e-2  # not an option of the command

`add_arguments(parser, RunOptions)` derives the argparse arguments (the flag is `--field-name` unless `flag` says
otherwise; `bool` fields are switches; a field without a default is required), and `from_arguments(RunOptions, args)`
builds the dataclass, every option not given keeping the field's default. `%(default)s` in a help text is the
field's default as it is typed on the command line. No torch here: `imagegen --help` loads this.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing

def option(default=dataclasses.MISSING, help: str = "", *, flag: str | None = None, metavar: str | None = None,
           positional: bool = False, repeat: bool = False, parse=None, factory=dataclasses.MISSING):
    """A dataclass field that is a command-line option. `repeat`: the flag may be given several times (a tuple of
    the values); `parse`: str -> the field's value (default: the field's type); `factory`: a default_factory."""
    metadata = {"help": help, "flag": flag, "metavar": metavar, "positional": positional, "repeat": repeat,
                "parse": parse}
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


def comma_list(text: str) -> tuple[str, ...]:
    """'unet, prior' -> ('unet', 'prior')."""
    return tuple(word.strip() for word in text.split(",") if word.strip())


def command_line_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("help")]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One argument per command-line field of the dataclass `cls`, in field order."""
    hints = typing.get_type_hints(cls)
    for f in command_line_fields(cls):
        meta, kind = f.metadata, _value_type(hints[f.name])
        how = {"help": _help(f), "metavar": meta["metavar"]}
        if kind is bool:
            how = {"help": how["help"], "action": "store_true"}
        elif meta["repeat"]:
            how.update(action="append", type=meta["parse"] or str)
        else:
            how["type"] = meta["parse"] or kind
        if meta["positional"]:
            parser.add_argument(f.name, **how)
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        parser.add_argument(flag_of(f), dest=f.name, default=None, **({"required": True} if required else {}), **how)


def from_arguments(cls, args: argparse.Namespace):
    """The dataclass of the parsed arguments: an option that was not given keeps the field's default."""
    values = {}
    for f in command_line_fields(cls):
        value = getattr(args, f.name)
        if value is not None:
            values[f.name] = tuple(value) if f.metadata["repeat"] else value
    return cls(**values)


def _value_type(hint):
    """int for `int | None`; tuple for `tuple[str, ...]`."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.get_origin(hint) or hint


def _help(f: dataclasses.Field) -> str:
    """The help text with %(default)s filled in from the field (argparse's own would show None)."""
    text = f.metadata["help"].replace("%", "%%").replace("%%(default)s", "%(default)s")
    if "%(default)s" not in text:
        return text
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return text.replace("%(default)s", _shown(default).replace("%", "%%"))


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
