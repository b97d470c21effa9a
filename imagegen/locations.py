"""Where imagegen looks for model presets and LoRA adapters, and where the files that ship with it are.

The search order, first match wins (`imagegen models` and `imagegen lora list` show it, with each entry's source):

    explicit   paths given on the command line (`--model FILE.toml`, `--lora FILE.safetensors`, `lora list PATH`)
    env        the folders of $IMAGEGEN_MODEL_PATH / $IMAGEGEN_LORA_PATH (separated by os.pathsep)
    cwd        ./configs/models and ./lora_adapters of the current folder
    user       the per-user folder: <the platform's user data dir>/imagegen/{models,lora_adapters}
               (Linux: $XDG_DATA_HOME/imagegen, else ~/.local/share/imagegen; `imagegen lora install` copies there)
    package    what ships inside the installed package (the presets, templates, training recipes, example adapters)

What ships: the repository keeps `configs/` and `lora_adapters/` at its top level, and the wheel carries a copy of
them (and of `samples/*.txt`) under `imagegen/shipped/` (setup.py's build_py writes it; no second copy in git). A checkout or an
editable install has no `imagegen/shipped/`, and uses the checkout's top-level folders instead. Either way the files
are found through the imported package, never through the current folder, so an installed imagegen works from any
folder (a service manager's, a Ray worker's). No torch here: `imagegen models` must answer at once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

SOURCES = ("explicit", "env", "cwd", "user", "package")
SHIPPED_FOLDER = "shipped"  # imagegen/shipped/ in a built wheel: configs/{models,templates,train}, lora_adapters/
PACKAGE_REF_PREFIX = "imagegen:"  # `prior = "imagegen:weights/shapes/prior"`: a folder inside the installed package


@dataclass(frozen=True)
class Kind:
    env: str  # os.pathsep-separated folders
    cwd: str  # relative to the current folder
    user: str  # relative to the per-user folder
    package: str  # relative to the shipped root


MODELS = Kind(env="IMAGEGEN_MODEL_PATH", cwd="configs/models", user="models", package="configs/models")
LORA = Kind(env="IMAGEGEN_LORA_PATH", cwd="lora_adapters", user="lora_adapters", package="lora_adapters")


@dataclass(frozen=True)
class Folder:
    path: Path
    source: str  # one of SOURCES


def package_root() -> Path:
    """The imported `imagegen` package folder (site-packages/imagegen, or the checkout's imagegen/)."""
    root = resources.files("imagegen")
    # Models are folders that diffusers opens by path, so the package must be a real folder (not a zip).
    return Path(str(root)).resolve() if isinstance(root, Path) else Path(__file__).resolve().parent


def shipped_root() -> Path | None:
    """The folder holding `configs/` and `lora_adapters/` as shipped: imagegen/shipped/ in an installed wheel, the
    checkout's top level when imagegen runs from a checkout (editable install, PYTHONPATH); None if neither."""
    package = package_root()
    if (package / SHIPPED_FOLDER).is_dir():
        return package / SHIPPED_FOLDER
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs").is_dir():
        return checkout
    return None


def shipped(relative: str) -> Path | None:
    """A shipped file or folder by its path in the repository ('configs/templates/shapes-background.txt'), or None."""
    root = shipped_root()
    if root is None or not (root / relative).exists():
        return None
    return root / relative


def existing_or_shipped(path: str | Path) -> Path:
    """`path` when it exists; else, for a relative path that names a shipped file (the README's
    `configs/templates/shapes-background.txt`, `configs/train/shapes.toml`), the shipped copy; else `path`."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    return shipped(path.as_posix()) or path


def package_ref(ref: str) -> Path:
    """'imagegen:weights/shapes/prior' -> that folder inside the imported package."""
    return package_root() / ref[len(PACKAGE_REF_PREFIX):].lstrip("/")


def user_dir() -> Path:
    """The per-user folder: the platform's user data directory for imagegen (honours $XDG_DATA_HOME on Linux)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("imagegen", appauthor=False))


def search_order(kind: Kind, explicit=()) -> list[Folder]:
    """The folders to search, first match wins; a folder reached twice (the checkout run from its own top level)
    keeps its first place and source."""
    folders = [Folder(Path(p), "explicit") for p in explicit]
    folders += [Folder(Path(p), "env") for p in os.environ.get(kind.env, "").split(os.pathsep) if p]
    folders.append(Folder(Path.cwd() / kind.cwd, "cwd"))
    folders.append(Folder(user_dir() / kind.user, "user"))
    root = shipped_root()
    if root is not None:
        folders.append(Folder(root / kind.package, "package"))
    unique: list[Folder] = []
    seen: set[Path] = set()
    for folder in folders:
        key = _resolved(folder.path)
        if key not in seen:
            seen.add(key)
            unique.append(folder)
    return unique


@dataclass
class Entry:
    """One file found by name; `shadows` are the files of the same name further down the search order."""
    name: str
    path: Path
    source: str
    shadows: list[Entry]

    def shadow_dicts(self) -> list[dict]:
        return [{"path": str(s.path), "source": s.source} for s in self.shadows]


def find_entries(kind: Kind, suffix: str, explicit=()) -> list[Entry]:
    """Every `*<suffix>` file of the search order by name (the first wins, the later ones are its shadows), in name
    order. An explicit path may be a folder or one file."""
    entries: dict[str, Entry] = {}
    for folder in search_order(kind, explicit):
        if folder.path.is_file() and folder.path.name.endswith(suffix):
            paths = [folder.path]
        elif folder.path.is_dir():
            paths = sorted(p for p in folder.path.glob(f"*{suffix}") if p.is_file() and not p.name.startswith("."))
        else:
            continue
        for path in paths:
            name = path.name[:-len(suffix)]
            entry = Entry(name, path, folder.source, [])
            if name in entries:
                if _resolved(entries[name].path) != _resolved(path):
                    entries[name].shadows.append(entry)
            else:
                entries[name] = entry
    return [entries[name] for name in sorted(entries)]


def describe_order(kind: Kind, explicit=()) -> str:
    """'env /a, cwd /here/lora_adapters, user ~/.local/share/imagegen/lora_adapters, package …' for messages."""
    return ", ".join(f"{f.source} {f.path}" for f in search_order(kind, explicit))


def search_order_text(kind: Kind, explicit=()) -> str:
    """The search order as `imagegen models` / `imagegen lora list` print it below their table."""
    lines = ["search order (first match wins):"]
    folders = search_order(kind, explicit)
    if not any(f.source == "env" for f in folders):
        folders.insert(sum(f.source == "explicit" for f in folders), Folder(Path(f"${kind.env}"), "env"))
    for f in folders:
        note = "  (not set)" if str(f.path) == f"${kind.env}" else "" if f.path.exists() else "  (none yet)"
        lines.append(f"  {f.source:<8} {f.path}{note}")
    return "\n".join(lines)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()
