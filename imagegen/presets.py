"""Model presets are data: `<name>.toml` names a prior folder, a decoder folder and defaults.

Found by name along the search order of imagegen.locations: $IMAGEGEN_MODEL_PATH, `./configs/models/` of the current
folder, the per-user folder's `models/`, then the presets that ship with the package (the repository's
`configs/models/`). `--model` also takes a preset file or a folder holding `prior/` and `decoder/`. A folder in a
preset is a hub id, a path relative to the preset file, or `imagegen:<path>` inside the installed package (the
embedded model: `imagegen:weights/shapes/prior`). No torch here: `imagegen models` must answer at once.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import locations
from .errors import UserError
from .settings import DecoderSettings, PriorSettings

PACKAGE_ROOT = Path(__file__).resolve().parent
DEFAULT_PRESET = "shapes"
PRESET_SUFFIX = ".toml"


def preset_dirs(explicit=()) -> list[Path]:
    """The preset folders, first match wins."""
    return [f.path for f in locations.search_order(locations.MODELS, explicit)]


@dataclass(frozen=True)
class Preset:
    name: str
    prior: str  # local folder or Hugging Face hub id
    decoder: str
    description: str = ""
    source: str = ""  # the preset file (or model folder) it was read from
    prior_defaults: PriorSettings = field(default_factory=PriorSettings)
    decoder_defaults: DecoderSettings = field(default_factory=DecoderSettings)

    def is_local(self, ref: str) -> bool:
        return Path(ref).is_dir()

    def availability(self) -> str:
        """'local', 'cached' (hub id in the HF cache), or 'missing' — decided from folders alone, without torch."""
        states = []
        for ref in (self.prior, self.decoder):
            if self.is_local(ref):
                states.append("local")
            elif _in_hf_cache(ref):
                states.append("cached")
            else:
                states.append("missing")
        if "missing" in states:
            return "missing"
        return "cached" if "cached" in states else "local"


def _in_hf_cache(repo_id: str) -> bool:
    if repo_id.count("/") != 1:
        return False
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "hub"
    )
    return (Path(hub) / ("models--" + repo_id.replace("/", "--")) / "snapshots").is_dir()


def _resolve_ref(ref: str, base: Path) -> str:
    """`imagegen:<path>` is inside the installed package; a relative path is relative to the preset file; anything
    that is not an existing folder stays a hub id."""
    if ref.startswith(locations.PACKAGE_REF_PREFIX):
        return str(locations.package_ref(ref))
    candidate = (base / ref).resolve()
    if ref.startswith((".", "/")) or candidate.is_dir():
        return str(candidate)
    return ref


def load_preset_file(path: Path) -> Preset:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"cannot read preset {str(path)!r}: {err}") from None
    for key in ("prior", "decoder"):
        if not isinstance(data.get(key), str):
            raise UserError(f"preset {str(path)!r} has no '{key}' entry (a folder or a hub id)")
    prior_defaults = data.get("prior_defaults", {})
    decoder_defaults = data.get("decoder_defaults", {})
    if not isinstance(prior_defaults, dict) or not isinstance(decoder_defaults, dict):
        raise UserError(f"preset {str(path)!r}: prior_defaults and decoder_defaults must be tables")
    try:
        prior_settings = replace(PriorSettings(), **prior_defaults)
        decoder_settings = replace(DecoderSettings(), **decoder_defaults)
    except TypeError as err:
        raise UserError(f"preset {str(path)!r} has an unknown default: {err}") from None
    return Preset(
        name=data.get("name", path.stem),
        prior=_resolve_ref(data["prior"], path.parent),
        decoder=_resolve_ref(data["decoder"], path.parent),
        description=data.get("description", ""),
        source=str(path),
        prior_defaults=prior_settings,
        decoder_defaults=decoder_settings,
    )


@dataclass(frozen=True)
class FoundPreset:
    """A preset as `imagegen models` lists it: where it was found and which same-named files it shadows."""
    preset: Preset
    source: str  # explicit / env / cwd / user / package (locations.SOURCES)
    shadows: tuple[locations.Entry, ...] = ()


def found_presets(explicit=()) -> list[FoundPreset]:
    """Every preset of the search order (name order), each with its source and the presets it shadows."""
    return [FoundPreset(load_preset_file(e.path), e.source, tuple(e.shadows))
            for e in locations.find_entries(locations.MODELS, PRESET_SUFFIX, explicit)]


def list_presets() -> list[Preset]:
    return [found.preset for found in found_presets()]


def find_preset(model: str) -> Preset:
    """A preset name, a preset .toml file, or a folder with `prior/` and `decoder/` subfolders."""
    path = Path(model)
    if model.endswith(PRESET_SUFFIX) and path.is_file():
        return load_preset_file(path)
    if path.is_dir():
        if (path / "prior").is_dir() and (path / "decoder").is_dir():
            return Preset(name=path.name, prior=str(path / "prior"), decoder=str(path / "decoder"), source=str(path))
        raise UserError(f"model folder {model!r} must hold 'prior/' and 'decoder/' subfolders (Kandinsky 2.2 layout)")
    if "/" not in model and "\\" not in model and model not in ("", ".", ".."):
        for folder in preset_dirs():
            candidate = folder / f"{model}{PRESET_SUFFIX}"
            if candidate.is_file():
                return load_preset_file(candidate)
    names = ", ".join(sorted(e.name for e in locations.find_entries(locations.MODELS, PRESET_SUFFIX))) or "none found"
    raise UserError(f"unknown model {model!r}; use a preset name ({names}), a preset .toml file, or a model folder "
                    f"(searched {locations.describe_order(locations.MODELS)})")
