"""A training checkpoint as one safetensors file: nested state (model, optimizer, LR schedule, EMA, counters, RNG)
split into its tensors, stored under path-like keys, and the structure around them, stored as JSON in the file's
metadata. Unlike `torch.save` nothing is pickled, so a checkpoint can be committed beside the safetensors weights
and read back without trusting it: a run that spans working sessions carries its checkpoints in git.

Containers are tagged in the JSON because plain JSON would lose what the loaders check: the optimizer's per-parameter
state is keyed by int, and diffusers' EMAModel wants its shadow parameters back as a list.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

STRUCTURE_KEY = "imagegen.state"  # the metadata entry holding the JSON structure
FORMAT = "imagegen.state/1"


def _child(path: str, key) -> str:
    return f"{path}/{key}" if path else str(key)


def _split(value, path: str, tensors: dict[str, torch.Tensor]):
    """The JSON-able structure of `value`; its tensors go into `tensors` under their paths."""
    if isinstance(value, torch.Tensor):
        # A copy of its own: safetensors refuses tensors that share memory (views of one parameter, tied weights).
        tensors[path] = value.detach().clone().contiguous()
        return {"tensor": path}
    if isinstance(value, dict):
        return {"dict": [[key, _split(item, _child(path, key), tensors)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        kind = "list" if isinstance(value, list) else "tuple"
        return {kind: [_split(item, _child(path, index), tensors) for index, item in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"{path}: a checkpoint holds tensors and plain containers, not {type(value).__name__}")


def _join(node: dict, tensors):
    (kind, content), = node.items()
    if kind == "tensor":
        return tensors.get_tensor(content)
    if kind == "dict":
        return {key: _join(item, tensors) for key, item in content}
    if kind == "list":
        return [_join(item, tensors) for item in content]
    if kind == "tuple":
        return tuple(_join(item, tensors) for item in content)
    return content


def save_state(path: Path, state: dict) -> None:
    """Write `state` atomically: a kill during the write leaves the previous file intact."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _split(state, "", tensors)
    temporary = path.with_suffix(".tmp")
    save_file(tensors, temporary, metadata={"format": FORMAT, STRUCTURE_KEY: json.dumps(structure)})
    os.replace(temporary, path)


def load_state(path: Path) -> dict:
    with safe_open(path, framework="pt") as tensors:
        metadata = tensors.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not an imagegen training checkpoint (format {metadata.get('format')!r})")
        return _join(json.loads(metadata[STRUCTURE_KEY]), tensors)
