"""LoRA adapter files on disk: finding them by name, reading their safetensors header, hashing them. No torch here,
so `imagegen lora list` answers at once.

An adapter is one `.safetensors` file. Its name is the file name without the extension, looked up in
`./lora_adapters/`, then in the folders of `$IMAGEGEN_LORA_PATH` (separated by `os.pathsep`); a path to a file works
too. Pickle formats (`.pt`, `.ckpt`, `.bin`, `.pth`) are refused: loading them would run code from the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..pickles import is_pickle

ADAPTER_SUFFIX = ".safetensors"
HEADER_LENGTH_BYTES = 8  # safetensors: little-endian u64 header length, then the JSON header, then the tensor bytes
MAX_HEADER_BYTES = 100 * 1024 * 1024
A1111_HASH_DIGITS = 12
COMPONENT_PREFIXES = {"unet": "unet.", "prior": "prior.", "text_encoder": "text_encoder.", "vae": "vae."}
KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_", "prior": "lora_prior_", "vae": "lora_vae_"}


def search_folders() -> list[Path]:
    folders = [Path.cwd() / "lora_adapters"]
    folders += [Path(p) for p in os.environ.get("IMAGEGEN_LORA_PATH", "").split(os.pathsep) if p]
    return folders


def available() -> dict[str, Path]:
    """name -> file, the first folder winning."""
    found: dict[str, Path] = {}
    for folder in search_folders():
        if folder.is_dir():
            for path in sorted(folder.glob(f"*{ADAPTER_SUFFIX}")):
                found.setdefault(path.stem, path)
    return found


def find(name_or_path: str) -> Path:
    """An adapter name or a path -> the file; a one-line UserError for everything else."""
    path = Path(name_or_path)
    if is_pickle(path):
        raise UserError(f"adapter {name_or_path!r} is a pickle file ({path.suffix}); only .safetensors adapters are "
                        "loaded, since unpickling can run code (convert it with a trusted tool first)")
    if path.suffix == ADAPTER_SUFFIX and path.is_file():
        return path
    if os.sep in name_or_path or "/" in name_or_path or ".." in name_or_path or path.suffix == ADAPTER_SUFFIX:
        if path.suffix == ADAPTER_SUFFIX:
            raise UserError(f"adapter file {name_or_path!r} does not exist")
        raise UserError(f"adapter name {name_or_path!r} must be a plain name (no path separators or '..'), or a "
                        "path to a .safetensors file")
    adapters = available()
    if name_or_path not in adapters:
        known = ", ".join(sorted(adapters)) or "none"
        raise UserError(f"unknown LoRA adapter {name_or_path!r}; available: {known} (searched "
                        f"{', '.join(str(f) for f in search_folders())})")
    return adapters[name_or_path]


def read_header(path: Path) -> tuple[dict, int]:
    """(the JSON header, the offset where tensor bytes start); a one-line UserError if the file is not safetensors."""
    try:
        with open(path, "rb") as f:
            raw_length = f.read(HEADER_LENGTH_BYTES)
            if len(raw_length) != HEADER_LENGTH_BYTES:
                raise ValueError("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", raw_length)
            if length > MAX_HEADER_BYTES:
                raise ValueError("header length is implausible")
            header = json.loads(f.read(length))
        data_bytes = max((end for k, v in header.items() if k != "__metadata__" for end in v["data_offsets"][1:]),
                         default=0)
        if HEADER_LENGTH_BYTES + length + data_bytes > path.stat().st_size:
            raise ValueError("truncated: the tensors end before the header says")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"adapter file {str(path)!r} is not a valid safetensors file ({err})") from None
    return header, HEADER_LENGTH_BYTES + length


def metadata(path: Path) -> dict[str, str]:
    return read_header(path)[0].get("__metadata__", {}) or {}


def tensor_hash(path: Path) -> str:
    """A1111's `Lora hashes` value: the first 12 hex digits of the sha256 of the tensor bytes after the header."""
    _, offset = read_header(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:A1111_HASH_DIGITS]


@dataclass
class AdapterInfo:
    name: str
    path: Path
    components: list[str]
    ranks: dict
    base_model: str
    trigger_words: list[str]
    size_bytes: int
    metadata: dict

    def as_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "components": self.components, "ranks": self.ranks,
                "base_model": self.base_model, "trigger_words": self.trigger_words, "size_bytes": self.size_bytes,
                "metadata": self.metadata}


def describe(path: Path) -> AdapterInfo:
    """What the header says about an adapter, for `lora list` and `lora inspect`."""
    header, _ = read_header(path)
    meta = header.get("__metadata__", {}) or {}
    keys = [k for k in header if k != "__metadata__"]
    components = sorted({c for c, prefix in COMPONENT_PREFIXES.items() if any(k.startswith(prefix) for k in keys)})
    components += [c for c, prefix in KOHYA_PREFIXES.items() if any(k.startswith(prefix) for k in keys)]
    ranks = json.loads(meta.get("imagegen.ranks", "{}")) or (
        {"all": int(meta["ss_network_dim"])} if "ss_network_dim" in meta else {})
    base = meta.get("imagegen.base_model") or meta.get("ss_base_model_version") or "unknown"
    try:
        base = json.loads(base).get("name", base) if base.startswith("{") else base
    except json.JSONDecodeError:
        pass
    triggers = json.loads(meta.get("imagegen.trigger_words", "[]")) if "imagegen.trigger_words" in meta else (
        [meta["modelspec.trigger_phrase"]] if meta.get("modelspec.trigger_phrase") else [])
    return AdapterInfo(path.stem, path, sorted(set(components)), ranks, base, triggers, path.stat().st_size, meta)
