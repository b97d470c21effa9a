"""PNG output: numbered files written atomically that never replace another, with two text chunks of the image's
GenerationRecord — `parameters` in AUTOMATIC1111's infotext format (so A1111, ComfyUI and civitai read it) and
`imagegen`, its JSON (what `--from-png` reads back). No torch here.
"""
from __future__ import annotations

import io
import itertools
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

JSON_CHUNK = "imagegen"
INFOTEXT_CHUNK = "parameters"
NUMBER_DIGITS = 5
PUBLISHED_MODE = 0o644
_NUMBERED = re.compile(r"^(\d+)-")


def next_number(folder: Path) -> int:
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=0) + 1


def publish(data: bytes, folder: str | Path, names: Iterator[str]) -> Path:
    """Write `data` under the first of `names` that is free: complete or not at all, never over another file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".partial-")
    try:
        os.chmod(tmp_name, PUBLISHED_MODE)  # mkstemp makes files only their owner can read
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        for name in names:
            try:
                os.link(tmp_name, folder / name)  # fails if the name exists, even under a race
                return folder / name
            except FileExistsError:
                continue
        raise FileExistsError(f"no free name in {str(folder)!r}")
    finally:
        os.unlink(tmp_name)


def png_bytes(image, record) -> bytes:
    """A PNG file holding the image and both metadata chunks of its GenerationRecord."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(INFOTEXT_CHUNK, record.to_infotext())
    info.add_text(JSON_CHUNK, record.to_json())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image, record, folder: str | Path) -> Path:
    """Write `NNNNN-<seed>.png` (the next free number) into folder, with both metadata chunks."""
    first = next_number(Path(folder)) if Path(folder).is_dir() else 1
    names = (f"{n:0{NUMBER_DIGITS}d}-{record.seed}.png" for n in itertools.count(first))
    return publish(png_bytes(image, record), folder, names)


def write_new_file(path: str | Path, data: bytes) -> Path:
    """Write `path`, or `stem-2.ext`, `stem-3.ext`, ... when it is taken."""
    path = Path(path)
    names = itertools.chain([path.name], (f"{path.stem}-{n}{path.suffix}" for n in itertools.count(2)))
    return publish(data, path.parent, names)


def read_text_chunks(source) -> dict:
    """The text chunks of a PNG (a path or a binary file); a one-line UserError for anything that is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            image.load()
            return dict(getattr(image, "text", {}) or {})
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise UserError(f"cannot read {str(getattr(source, 'name', source))!r} as a PNG: {err}") from None


def read_record(path: str | Path):
    """The GenerationRecord imagegen stored in a PNG; a one-line UserError for anything else."""
    from .record import GenerationRecord

    text = read_text_chunks(path).get(JSON_CHUNK)
    if text is None:
        raise UserError(f"{str(path)!r} holds no imagegen metadata (no '{JSON_CHUNK}' text chunk); only PNGs written "
                        "by imagegen can be regenerated")
    try:
        return GenerationRecord.from_json(text)
    except UserError as err:
        raise UserError(f"the imagegen metadata in {str(path)!r}: {err}") from None


def check_writable_folder(folder: str | Path) -> None:
    """Fail before any work when the output folder cannot be created or written."""
    path = Path(folder).absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"output folder {str(folder)!r} cannot be created: {str(probe)!r} is a file")
    # A real probe file, not os.access: root passes every permission check, yet /proc or a read-only mount refuse.
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise UserError(f"output folder {str(folder)!r} is not writable (cannot create a file in {str(probe)!r}: "
                        f"{err.strerror})") from None
