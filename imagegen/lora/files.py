"""LoRA adapter files on disk: finding them by name, reading their safetensors header, hashing them, installing
them. No torch here (but for the NaN check of `lora install`), so `imagegen lora list` answers at once.

An adapter is one `.safetensors` file. Its name is the file name without the extension, looked up along the search
order of imagegen.locations: the folders of `$IMAGEGEN_LORA_PATH` (separated by `os.pathsep`), `./lora_adapters/` of
the current folder, the per-user folder's `lora_adapters/` (where `imagegen lora install` copies), then the example
adapters that ship with the package. A path to a file works too. Pickle formats (`.pt`, `.ckpt`, `.bin`, `.pth`) are
refused: loading them would run code from the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from .. import locations
from ..errors import UserError
from ..pickles import is_pickle

ADAPTER_SUFFIX = ".safetensors"
HEADER_LENGTH_BYTES = 8  # safetensors: little-endian u64 header length, then the JSON header, then the tensor bytes
MAX_HEADER_BYTES = 100 * 1024 * 1024
A1111_HASH_DIGITS = 12
COMPONENT_PREFIXES = {"unet": "unet.", "prior": "prior.", "text_encoder": "text_encoder.", "vae": "vae."}
KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_", "prior": "lora_prior_", "vae": "lora_vae_"}
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def search_folders(explicit=()) -> list[Path]:
    """The adapter folders, first match wins (locations.search_order gives each one's source)."""
    return [f.path for f in locations.search_order(locations.LORA, explicit)]


def entries(explicit=()) -> list[locations.Entry]:
    """Every adapter of the search order by name, with its source and the same-named files it shadows."""
    return locations.find_entries(locations.LORA, ADAPTER_SUFFIX, explicit)


def available() -> dict[str, Path]:
    """name -> file, the first folder winning."""
    return {entry.name: entry.path for entry in entries()}


def _refuse_pickle(name_or_path: str, path: Path) -> None:
    if is_pickle(path):
        raise UserError(f"adapter {name_or_path!r} is a pickle file ({path.suffix}); only .safetensors adapters are "
                        "loaded, since unpickling can run code (convert it with a trusted tool first)")


def find(name_or_path: str) -> Path:
    """An adapter name or a path -> the file; a one-line UserError for everything else."""
    path = Path(name_or_path)
    _refuse_pickle(name_or_path, path)
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
                        f"{locations.describe_order(locations.LORA)})")
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


def user_folder() -> Path:
    """Where `imagegen lora install` puts adapters: the per-user folder's lora_adapters/."""
    return locations.user_dir() / locations.LORA.user


def validate(path: Path) -> AdapterInfo:
    """What the loader checks before it touches a model: safetensors (never a pickle), a complete header, adapter
    keys only, every float tensor finite. -> the header's description; a one-line UserError otherwise."""
    _refuse_pickle(str(path), path)
    if path.suffix != ADAPTER_SUFFIX:
        raise UserError(f"adapter file {str(path)!r} must be a {ADAPTER_SUFFIX} file")
    if not path.is_file():
        raise UserError(f"adapter file {str(path)!r} does not exist")
    header, _ = read_header(path)
    keys = [k for k in header if k != "__metadata__"]
    prefixes = tuple(COMPONENT_PREFIXES.values()) + tuple(KOHYA_PREFIXES.values())
    unknown = [k for k in keys if not k.startswith(prefixes)]
    if not keys or unknown:
        found = f"found {unknown[0]!r}" if unknown else "it holds no tensors"
        raise UserError(f"adapter file {str(path)!r} holds no LoRA adapter: keys must start with unet., prior., "
                        f"text_encoder. or vae. (or kohya's lora_unet_/lora_te_/lora_prior_/lora_vae_); {found}")
    load_finite_tensors(path)
    return describe(path)


def load_finite_tensors(path: Path) -> dict:
    """Every tensor of an adapter file; a corrupt file or a NaN/inf value is a UserError naming the file (and the
    tensor), so a broken adapter is refused before it touches a model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"adapter file {str(path)!r} is corrupt: {err}") from None
    import torch

    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UserError(f"adapter file {str(path)!r} holds NaN/inf values in tensor {key!r}; it cannot be used")
    return tensors


def install(source: str | Path, name: str | None = None) -> Path:
    """Copy a validated adapter file into the per-user folder as `<name>.safetensors` (default: its own name),
    atomically and never over an existing file. -> the new file."""
    from ..png import publish

    source = Path(source)
    name = source.stem if name is None else name
    if not PLAIN_NAME.match(name) or ".." in name or name.endswith(ADAPTER_SUFFIX):
        raise UserError(f"adapter name {name!r} must be a plain name: letters, digits, '_', '-', '.', '+' (no path "
                        f"separators, '..' or {ADAPTER_SUFFIX} suffix)")
    validate(source)
    folder = user_folder()
    target = folder / f"{name}{ADAPTER_SUFFIX}"
    if target.exists():
        raise UserError(f"adapter {name!r} is already installed: {target} (remove it first, or give --name)")
    try:
        return publish(source.read_bytes(), folder, [target.name])
    except FileExistsError:
        raise UserError(f"adapter {name!r} is already installed: {target} (remove it first, or give --name)") from None
    except OSError as err:
        raise UserError(f"cannot install {str(source)!r} into {str(folder)!r}: {err}") from None
