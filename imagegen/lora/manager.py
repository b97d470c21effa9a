"""Loading, activating, fusing and unloading LoRA adapters on a pipeline's U-Net, prior, text encoder and VAE.

peft holds the layers: diffusers' `load_lora_adapter` (U-Net, prior) and peft's `inject_adapter_in_model` +
`set_peft_model_state_dict` (the transformers text encoder, the VAE) put them in; diffusers'
`set_weights_and_activate_adapters` sets each adapter's multiplier; peft's `merge` / `unmerge` fuse and unfuse. This
module is the glue: it validates an adapter completely before touching the model (so a bad file never leaves half an
adapter behind), keeps loaded adapters resident so switching between generations never reloads the base weights, and
removes every LoRA layer when the last adapter is unloaded, which gives the base model back bit for bit.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import files, formats
from .requests import COMPONENTS, FULL_WINDOW, LoraRequest

SHOWN_PROBLEMS = 3


@dataclass
class LoadedAdapter:
    name: str
    path: Path
    components: tuple[str, ...]
    hash: str  # A1111 "Lora hashes"


class LoraManager:
    def __init__(self, pipe):
        self.pipe = pipe
        self.loaded: dict[str, LoadedAdapter] = {}
        self.active: dict[str, dict] = {}  # name -> component -> multiplier
        self.windows: dict[str, tuple] = {}  # name -> (start, stop) fractions of the decoder steps of its U-Net part
        self._unet_fraction = None  # where in the decoder loop the U-Net's multipliers were last set (None: all on)
        self.fused = False
        self._weights_before_fusing = {}  # layer -> its base weight before merge: unfusing restores it exactly

    @property
    def models(self) -> dict:
        return {c: getattr(self.pipe, c) for c in COMPONENTS}

    # ---------------------------------------------------------------- loading
    def load(self, name_or_path: str) -> str:
        """Load an adapter (inactive) and return its name; loading a loaded name does nothing."""
        if name_or_path in self.loaded:
            return name_or_path
        path = files.find(name_or_path)
        name = path.stem
        if name in self.loaded:
            return name
        if self.fused:
            raise UserError("unfuse the LoRA adapters before loading another one")
        adapter = self._read(path)
        self._check_base_model(name, adapter.metadata)
        self._check_fits(name, adapter)
        done = []
        try:
            for component, part in adapter.components.items():
                self._inject(component, name, part)
                done.append(component)
        except Exception as err:  # undo the components already loaded: never half an adapter
            for component in done:
                self._delete(component, name)
            raise UserError(f"cannot load LoRA adapter {name!r}: {str(err).splitlines()[0]}") from None
        for component in done:
            self._set_component_adapters(component)  # loaded inactive: the active set is unchanged
        self.loaded[name] = LoadedAdapter(name, path, tuple(done), files.tensor_hash(path))
        return name

    def _read(self, path: Path) -> formats.AdapterWeights:
        metadata = files.metadata(path)  # also checks the header and that the file is complete
        return formats.from_tensors(files.load_finite_tensors(path), metadata, self.models)

    def _check_base_model(self, name: str, metadata: dict) -> None:
        stored = metadata.get("imagegen.base_model")
        if not stored:
            return  # adapters from other tools carry no base fingerprint: the key and shape checks still apply
        base = json.loads(stored)
        ours = {"name": self.pipe.model.name, "fingerprint": self.pipe.fingerprint()}
        if base.get("fingerprint") != ours["fingerprint"]:
            raise UserError(f"LoRA adapter {name!r} was made for base model {base.get('name')!r} (fingerprint "
                            f"{base.get('fingerprint')}), but the loaded model is {ours['name']!r} (fingerprint "
                            f"{ours['fingerprint']})")

    def _check_fits(self, name: str, adapter: formats.AdapterWeights) -> None:
        """Every LoRA tensor must sit on a Linear/Conv module of the model with matching shapes."""
        problems = []
        for component, part in adapter.components.items():
            modules = dict(self.models[component].named_modules())
            for key, tensor in part.state_dict.items():
                module_name, _, kind = key.rpartition(".lora_")
                module = modules.get(module_name)
                weight = getattr(getattr(module, "base_layer", module), "weight", None)
                if weight is None:
                    problems.append(f"{component}.{key}: no such module")
                    continue
                rank = part.config["r"] if kind.startswith("A") else tensor.shape[1]
                if kind.startswith("A") and (tensor.shape[1] != weight.shape[1] or tensor.ndim != weight.ndim):
                    problems.append(f"{component}.{key}: shape {tuple(tensor.shape)} does not fit input "
                                    f"{weight.shape[1]}")
                elif kind.startswith("B") and tensor.shape[0] != weight.shape[0]:
                    problems.append(f"{component}.{key}: shape {tuple(tensor.shape)} does not fit output "
                                    f"{weight.shape[0]} (rank {rank})")
        if problems:
            shown = "; ".join(problems[:SHOWN_PROBLEMS])
            more = f" and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
            raise UserError(f"LoRA adapter {name!r} does not fit this model: {shown}{more}")

    def _inject(self, component: str, name: str, part: formats.ComponentLora) -> None:
        model = self.models[component]
        if component in ("unet", "prior"):
            model.load_lora_adapter(part.state_dict, prefix=None, adapter_name=name, metadata=part.config)
            return
        from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

        inject_adapter_in_model(LoraConfig(**part.config), model, adapter_name=name)
        set_peft_model_state_dict(model, part.state_dict, adapter_name=name)

    # ---------------------------------------------------------------- choosing and weighting
    def activate(self, requests: list[LoraRequest]) -> None:
        """Exactly these adapters, with these multipliers, for the next generations (loading what is missing)."""
        names = [self.load(r.name) for r in requests]
        if self.fused and dict(zip(names, (r.weights for r in requests))) != self.active:
            raise UserError("the LoRA adapters are fused; unfuse them before changing adapters or weights")
        windowed = [r.describe() for r in requests if r.window != FULL_WINDOW]
        if self.fused and windowed:
            raise UserError(f"LoRA {windowed[0]!r}: a start/stop window needs unfused adapters; unfuse them first")
        self.active = {name: dict(r.weights) for name, r in zip(names, requests)}
        self.windows = {name: tuple(r.window) for name, r in zip(names, requests)}
        self._unet_fraction = None
        for component in COMPONENTS:
            self._set_component_adapters(component)

    def set_weights(self, weights: dict) -> None:
        """{name: multiplier or {component: multiplier}} for loaded adapters; 0 switches one off."""
        requests = []
        for name, weight in weights.items():
            per_component = weight if isinstance(weight, dict) else {c: weight for c in COMPONENTS}
            window = self.windows.get(name, FULL_WINDOW)
            requests.append(LoraRequest(name, {c: float(per_component.get(c, 0.0)) for c in COMPONENTS}, window))
        self.activate(requests)

    def step_windows(self):
        """The decoder loop's step hook for adapters with a start/stop window, or None when there are none."""
        if any(self.windows.get(n, FULL_WINDOW) != FULL_WINDOW for n in self.active
               if "unet" in self.loaded_components(n)):
            return StepWindows(self)
        return None

    def at_decoder_fraction(self, fraction: float | None) -> None:
        """Set the U-Net's multipliers for the decoder step at `fraction` of the loop (an adapter outside its window
        gets 0, which adds exactly nothing); None: every active adapter at its multiplier again."""
        inside = None if fraction is None else tuple(
            self.windows[n][0] <= fraction < self.windows[n][1] for n in self.active)
        if inside != self._unet_fraction:
            import torch

            self._unet_fraction = inside
            with torch.inference_mode(False):  # peft switches requires_grad flags as it sets adapters
                self._set_component_adapters("unet", inside)

    def _set_component_adapters(self, component: str, inside: tuple | None = None) -> None:
        from diffusers.utils.peft_utils import set_adapter_layers, set_weights_and_activate_adapters

        model = self.models[component]
        names = [n for n in self.active if component in self.loaded_components(n)]
        if not any(True for _ in self._lora_layers(model)):
            return
        if not names:
            set_adapter_layers(model, enabled=False)  # peft layers pass straight through to the base layer
            return
        set_adapter_layers(model, enabled=True)
        on = dict(zip(self.active, inside)) if inside is not None else {}
        set_weights_and_activate_adapters(model, names, [self.active[n][component] * on.get(n, True) for n in names])

    def loaded_components(self, name: str) -> tuple[str, ...]:
        return self.loaded[name].components if name in self.loaded else ()

    # ---------------------------------------------------------------- fusing and unloading
    def fuse(self) -> None:
        """Merge the active adapters into the base weights (faster steps; weights cannot change until unfused)."""
        if self.fused or not self.active:
            return
        for component, model in self.models.items():
            names = [n for n in self.active if component in self.loaded_components(n)]
            for layer in self._lora_layers(model):
                self._weights_before_fusing[layer] = layer.get_base_layer().weight.detach().clone()
                layer.merge(adapter_names=[n for n in names if n in layer.lora_A])
        self.fused = True

    def unfuse(self) -> None:
        if not self.fused:
            return
        for model in self.models.values():
            for layer in self._lora_layers(model):
                layer.unmerge()  # peft's bookkeeping; subtracting leaves float rounding behind, so then:
                layer.get_base_layer().weight.data.copy_(self._weights_before_fusing.pop(layer))
        self.fused = False

    def unload(self, name: str) -> None:
        if name not in self.loaded:
            raise UserError(f"LoRA adapter {name!r} is not loaded; loaded: {', '.join(self.loaded) or 'none'}")
        self.unfuse()
        for component in self.loaded[name].components:
            self._delete(component, name)
        del self.loaded[name]
        self.active.pop(name, None)
        for component in COMPONENTS:
            self._set_component_adapters(component)

    def unload_all(self) -> None:
        for name in list(self.loaded):
            self.unload(name)

    def _delete(self, component: str, name: str) -> None:
        from diffusers.utils.peft_utils import delete_adapter_layers, recurse_remove_peft_layers

        model = self.models[component]
        delete_adapter_layers(model, name)
        getattr(model, "peft_config", {}).pop(name, None)
        remaining = {n for layer in self._lora_layers(model) for n in layer.lora_A}
        if not remaining:  # the last adapter: put the original modules back, which restores the base exactly
            recurse_remove_peft_layers(model)
            if hasattr(model, "peft_config"):
                del model.peft_config
            if hasattr(model, "_hf_peft_config_loaded"):
                model._hf_peft_config_loaded = False

    @staticmethod
    def _lora_layers(model):
        from peft.tuners.lora import LoraLayer

        return [m for m in model.modules() if isinstance(m, LoraLayer)]

    # ---------------------------------------------------------------- what generations record
    def records(self) -> list:
        from ..record import LoraUse

        return [LoraUse(name=n, weights=dict(w), hash=self.loaded[n].hash, path=str(self.loaded[n].path),
                        window=tuple(self.windows.get(n, FULL_WINDOW))) for n, w in self.active.items()]


class StepWindows:
    """A step hook: before each decoder step, each windowed adapter's U-Net part is on or off by the fraction of
    the loop done; `close()` puts every active adapter back at its multiplier."""

    def __init__(self, manager: LoraManager):
        self.manager = manager
        manager.at_decoder_fraction(0.0)

    def __call__(self, info) -> None:  # info: imagegen.pipeline.StepInfo of the step just done
        done = info.index + 1
        self.manager.at_decoder_fraction(done / info.total if done < info.total else None)

    def close(self) -> None:
        self.manager.at_decoder_fraction(None)
