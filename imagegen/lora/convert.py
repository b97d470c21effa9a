"""`imagegen lora convert`: an adapter written again with kohya's key names, for A1111 / ComfyUI style tools."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from . import files, formats
from .requests import COMPONENTS


def convert_to_kohya(source: Path, output: Path, model: str) -> Path:
    """Kohya keys need the model's module names, so the base model's components are loaded."""
    from safetensors.torch import load_file, save

    from ..png import write_new_file

    if output.exists():
        raise UserError(f"output {str(output)!r} exists; imagegen never overwrites a file")
    if output.suffix != files.ADAPTER_SUFFIX:
        raise UserError(f"output {str(output)!r} must end in {files.ADAPTER_SUFFIX}")
    metadata = files.metadata(source)
    from ..loading import load_pipeline

    pipe = load_pipeline(model)
    models = {c: getattr(pipe, c) for c in COMPONENTS}
    adapter = formats.from_tensors(load_file(source), metadata, models)
    written = write_new_file(output, save(formats.to_kohya(adapter), metadata={**metadata, "imagegen.format": "kohya"}))
    if written != output:  # created meanwhile by someone else: keep theirs, report ours
        raise UserError(f"{str(output)!r} appeared while converting; the result is in {str(written)!r}")
    return written
