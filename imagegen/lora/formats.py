"""Adapter file formats, all read into one form: per component, a peft state dict (`<module>.lora_A.weight`,
`<module>.lora_B.weight`) and the peft `LoraConfig` arguments that rebuild its layers.

- imagegen / peft / diffusers: keys `unet.<module>.lora_A.weight`, `prior.…`, `text_encoder.…`, `vae.…` (the VAE
  decoder: imagegen's extension, for styles whose fine detail the base VAE cannot draw); imagegen files carry
  their LoraConfig in the header (`imagegen.lora_config.<component>`); others get rank from the tensors and
  alpha = rank (diffusers' default).
- kohya (sd-scripts, A1111, ComfyUI): keys `lora_unet_<module_with_underscores>.lora_down.weight` /
  `.lora_up.weight` / `.alpha` (scale = alpha / rank), `lora_te_…` for the text encoder, and `lora_prior_…` /
  `lora_vae_…` (imagegen's extensions for the prior and the VAE). Underscored names are mapped back to module paths
  through the model's own module names.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..errors import UserError
from .files import COMPONENT_PREFIXES, KOHYA_PREFIXES

KOHYA_SUFFIXES = {".lora_down.weight": "lora_A.weight", ".lora_up.weight": "lora_B.weight"}


@dataclass
class ComponentLora:
    state_dict: dict  # "<module path>.lora_A.weight" -> tensor (peft naming, no component prefix)
    config: dict  # LoraConfig keyword arguments

    @property
    def modules(self) -> list[str]:
        return sorted({k.rsplit(".lora_", 1)[0] for k in self.state_dict})


@dataclass
class AdapterWeights:
    components: dict = field(default_factory=dict)  # component -> ComponentLora
    metadata: dict = field(default_factory=dict)


def is_kohya(keys) -> bool:
    return any(k.startswith(tuple(KOHYA_PREFIXES.values())) for k in keys)


def lora_config(ranks: dict[str, int], alphas: dict[str, float]) -> dict:
    """LoraConfig arguments for modules with these ranks and alphas: the most common value as default, the rest as
    per-module patterns (peft matches a pattern against the end of the module path)."""
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    return {
        "r": int(r), "lora_alpha": float(alpha), "target_modules": sorted(ranks),
        "rank_pattern": {f"^{m}$": int(v) for m, v in ranks.items() if v != r},
        "alpha_pattern": {f"^{m}$": float(v) for m, v in alphas.items() if v != alpha},
        "init_lora_weights": False,
    }


def from_tensors(tensors: dict, metadata: dict, models: dict) -> AdapterWeights:
    """Any supported layout -> AdapterWeights; `models` (component -> module) resolves kohya names."""
    if is_kohya(tensors):
        return _from_kohya(tensors, metadata, models)
    adapter = AdapterWeights(metadata=metadata)
    unknown = [k for k in tensors if not k.startswith(tuple(COMPONENT_PREFIXES.values()))]
    if unknown:
        raise UserError(f"adapter keys must start with unet., prior., text_encoder. or vae. (or be kohya's "
                        f"lora_unet_/lora_te_/lora_prior_/lora_vae_); found {unknown[0]!r} and {len(unknown) - 1} "
                        "more like it")
    for component, prefix in COMPONENT_PREFIXES.items():
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not state:
            continue
        stored = metadata.get(f"imagegen.lora_config.{component}")
        if stored:
            config = json.loads(stored)
        else:
            ranks = {k.rsplit(".lora_A", 1)[0]: v.shape[0] for k, v in state.items() if ".lora_A." in k}
            config = lora_config(ranks, {m: float(r) for m, r in ranks.items()})
        adapter.components[component] = ComponentLora(state, config)
    return adapter


def _from_kohya(tensors: dict, metadata: dict, models: dict) -> AdapterWeights:
    adapter = AdapterWeights(metadata=metadata)
    for component, prefix in KOHYA_PREFIXES.items():
        keys = [k for k in tensors if k.startswith(prefix)]
        if not keys:
            continue
        if component not in models:
            raise UserError(f"adapter has {component} weights ({keys[0]!r}) but the model has no {component}")
        by_underscored = {name.replace(".", "_"): name for name, _ in models[component].named_modules() if name}
        state, ranks, alphas, unmatched = {}, {}, {}, []
        for key in keys:
            stem, _, suffix = key[len(prefix):].partition(".")
            module = by_underscored.get(stem)
            if module is None:
                unmatched.append(key)
                continue
            if suffix == "alpha":
                alphas[module] = float(tensors[key])
            elif "." + suffix in KOHYA_SUFFIXES:
                state[f"{module}.{KOHYA_SUFFIXES['.' + suffix]}"] = tensors[key]
                if suffix.startswith("lora_down"):
                    ranks[module] = tensors[key].shape[0]
            else:
                unmatched.append(key)
        if unmatched:
            raise UserError(f"{len(unmatched)} kohya key(s) match no {component} module, e.g. "
                            f"{', '.join(repr(k) for k in unmatched[:3])}")
        alphas = {m: alphas.get(m, float(r)) for m, r in ranks.items()}  # no alpha stored: scale 1, as kohya
        adapter.components[component] = ComponentLora(state, lora_config(ranks, alphas))
    return adapter


def module_alphas(part: ComponentLora) -> dict[str, float]:
    """The alpha of every module, patterns resolved."""
    config = part.config
    result = {}
    for module in part.modules:
        result[module] = next((v for p, v in config.get("alpha_pattern", {}).items() if p == f"^{module}$"),
                              config["lora_alpha"])
    return result


def to_kohya(adapter: AdapterWeights) -> dict:
    """AdapterWeights -> kohya tensors (lora_down / lora_up / alpha)."""
    import torch

    tensors = {}
    for component, part in adapter.components.items():
        prefix = KOHYA_PREFIXES[component]
        alphas = module_alphas(part)
        for key, value in part.state_dict.items():
            module, _, kind = key.rpartition(".lora_")
            kohya_kind = "lora_down.weight" if kind.startswith("A") else "lora_up.weight"
            tensors[f"{prefix}{module.replace('.', '_')}.{kohya_kind}"] = value.contiguous()
        for module, alpha in alphas.items():
            tensors[f"{prefix}{module.replace('.', '_')}.alpha"] = torch.tensor(alpha)
    return tensors


def to_peft_tensors(adapter: AdapterWeights) -> dict:
    return {f"{COMPONENT_PREFIXES[c]}{k}": v.contiguous() for c, part in adapter.components.items()
            for k, v in part.state_dict.items()}


def _linear_and_conv(part: ComponentLora) -> tuple[dict, dict]:
    """{module: (rank, alpha)} of the component's linear layers and of its convolutions (4-D LoRA weights)."""
    alphas = module_alphas(part)
    linear, conv = {}, {}
    for key, tensor in part.state_dict.items():
        if ".lora_A." in key:
            module = key.rsplit(".lora_A", 1)[0]
            (conv if tensor.ndim == 4 else linear)[module] = (tensor.shape[0], alphas[module])
    return linear, conv


def _most_common(values) -> tuple:
    return Counter(values).most_common(1)[0][0]


def header_metadata(adapter: AdapterWeights, *, base_model: dict, title: str, trigger_words: list[str],
                    training: dict | None = None) -> dict[str, str]:
    """The safetensors header: imagegen's own keys, kohya's minimal `ss_*` keys and `modelspec.*`. Ranks and alphas
    are the linear layers'; LoRA on convolutions is recorded as kohya's LoCon does (`ss_network_args` conv_dim)."""
    layers = {c: _linear_and_conv(part) for c, part in adapter.components.items()}
    linear = {c: _most_common((lin or conv).values()) for c, (lin, conv) in layers.items()}  # (rank, alpha)
    convs = [rank_alpha for _, conv in layers.values() for rank_alpha in conv.values()]
    first_rank, first_alpha = next(iter(linear.values()))
    meta = {
        "imagegen.format": "peft",
        "imagegen.base_model": json.dumps(base_model),
        "imagegen.ranks": json.dumps({c: int(r) for c, (r, _) in linear.items()}),
        "imagegen.alphas": json.dumps({c: float(a) for c, (_, a) in linear.items()}),
        "imagegen.trigger_words": json.dumps(trigger_words),
        "imagegen.training": json.dumps(training or {}),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(int(first_rank)),
        "ss_network_alpha": str(float(first_alpha)),
        "ss_base_model_version": f"imagegen:{base_model.get('name', 'unknown')}",
        "modelspec.architecture": "kandinsky-2.2/lora",
        "modelspec.title": title,
        "modelspec.trigger_phrase": ", ".join(trigger_words),
        "modelspec.date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "modelspec.sai_model_spec": "1.0.0",
    }
    if convs:
        conv_rank, conv_alpha = _most_common(convs)
        meta["ss_network_args"] = json.dumps({"conv_dim": str(int(conv_rank)), "conv_alpha": str(float(conv_alpha))})
    for component, part in adapter.components.items():
        meta[f"imagegen.lora_config.{component}"] = json.dumps(part.config)
        meta[f"imagegen.target_modules.{component}"] = json.dumps(part.modules)
    return meta


def write_adapter(path, adapter: AdapterWeights, metadata: dict[str, str], overwrite: bool = False):
    """Write the adapter (peft key naming) atomically. An existing file is replaced only with `overwrite`, and only
    once the new file is complete."""
    import os
    import tempfile
    from pathlib import Path

    from safetensors.torch import save

    from ..png import PUBLISHED_MODE

    path = Path(path)
    data = save(to_peft_tensors(adapter), metadata=metadata)
    if not overwrite:
        from ..png import publish

        if path.exists():
            raise UserError(f"adapter {str(path)!r} exists; pass --overwrite to replace it")
        written = publish(data, path.parent, iter([path.name]))
        return written
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix=path.suffix)
    os.chmod(tmp, PUBLISHED_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: readers see the old file or the new one, never a mix
    return path
