"""Pickle files are refused everywhere: unpickling can run code from the file, so weights and adapters are read from
.safetensors only. One list of the pickle formats, for every place that names a file to load (no torch here)."""
from __future__ import annotations

from pathlib import Path

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl")


def is_pickle(path: str | Path) -> bool:
    """Whether the file name is one of a pickle format (by its suffix; the file is not opened)."""
    return Path(path).suffix.lower() in PICKLE_SUFFIXES
