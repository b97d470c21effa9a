"""Reading a user's text file (a prompt list, a job list) as UTF-8 lines, with one-line errors naming the file."""
from __future__ import annotations

from pathlib import Path

from .errors import UserError


def read_utf8_lines(path: str | Path, what: str, advice: str = "") -> list[str]:
    """The lines of a UTF-8 text file (a byte-order mark and CRLF endings removed); a missing file or a byte that
    is not UTF-8 is a UserError naming `what` (e.g. "prompts file"), the path and the line."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {what} {str(path)!r}: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise UserError(f"{what} {str(path)!r} is not UTF-8 text: byte 0x{data[err.start]:02x} on line {line}"
                        f"{advice}") from None
    return [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
