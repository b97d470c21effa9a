"""PNG output: numbered files written atomically that never replace another, with two text chunks —
`parameters` in AUTOMATIC1111's infotext format (so A1111, ComfyUI and civitai read it) and `imagegen`, a JSON
object with every parameter (what `--from-png` reads back). No torch here.
"""
from __future__ import annotations

import io
import itertools
import json
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
SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpm++": "DPM++ 2M", "euler": "Euler", "euler_a": "Euler a",
                 "unipc": "UniPC", "unclip": "unCLIP"}
_NUMBERED = re.compile(r"^(\d+)-")


def _quote(value) -> str:
    """A1111's rule: values holding a comma, colon or newline are written as JSON strings."""
    text = str(value)
    if not any(ch in text for ch in ",:\n"):
        return text
    return json.dumps(text, ensure_ascii=False)


def infotext(record: dict) -> str:
    fields = {
        "Steps": record["steps"],
        "Sampler": SAMPLER_NAMES.get(record["scheduler"], record["scheduler"]),
        "CFG scale": record["guidance"],
        "Seed": record["seed"],
        "Size": f"{record['width']}x{record['height']}",
        "Model": record["model"],
        "Prior steps": record["prior_steps"],
        "Prior sampler": SAMPLER_NAMES.get(record["prior_scheduler"], record["prior_scheduler"]),
        "Prior CFG scale": record["prior_guidance"],
        "Prior seed": record["prior_seed"],
    }
    fields.update(record.get("extra_infotext", {}))
    fields["Version"] = f"imagegen {record['version']}"
    lines = [record["prompt"]]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields.items()))
    return "\n".join(lines)


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


def save_png(image, record: dict, folder: str | Path) -> Path:
    """Write `NNNNN-<seed>.png` (the next free number) into folder, with both metadata chunks."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(INFOTEXT_CHUNK, infotext(record))
    info.add_text(JSON_CHUNK, json.dumps(record, ensure_ascii=False))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    first = next_number(Path(folder)) if Path(folder).is_dir() else 1
    names = (f"{n:0{NUMBER_DIGITS}d}-{record['seed']}.png" for n in itertools.count(first))
    return publish(buffer.getvalue(), folder, names)


def write_new_file(path: str | Path, data: bytes) -> Path:
    """Write `path`, or `stem-2.ext`, `stem-3.ext`, ... when it is taken."""
    path = Path(path)
    names = itertools.chain([path.name], (f"{path.stem}-{n}{path.suffix}" for n in itertools.count(2)))
    return publish(data, path.parent, names)


def read_record(path: str | Path) -> dict:
    """The JSON parameters imagegen stored in a PNG; a one-line UserError for anything else."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            text = image.text.get(JSON_CHUNK) if hasattr(image, "text") else None
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"cannot read {str(path)!r} as a PNG: {err}") from None
    if text is None:
        raise UserError(f"{str(path)!r} holds no imagegen metadata (no '{JSON_CHUNK}' text chunk); only PNGs written by imagegen can be regenerated")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f"the imagegen metadata in {str(path)!r} is not valid JSON") from None


def check_writable_folder(folder: str | Path) -> None:
    """Fail before any work when the output folder cannot be created or written."""
    path = Path(folder).absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"output folder {str(folder)!r} cannot be created: {str(probe)!r} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"output folder {str(folder)!r} is not writable")
