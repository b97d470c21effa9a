"""What a LoRA training run writes besides its checkpoints: the adapter file, in imagegen's format (peft key naming,
every metadata field of imagegen.lora.formats.header_metadata), and validation grids - for each validation prompt a row
made without the adapter and a row made with it, at the training resolution and the model's default settings.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

ADAPTER = "imagegen_training"  # the peft adapter name while training
VALIDATION_IMAGES = 4


def lora_state(model) -> dict:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=ADAPTER)


def build_adapter(models: dict, scale: float):
    """The trained LoRA weights; every module's alpha is its rank times `scale` (alpha / rank)."""
    from ...lora import formats

    components = {}
    for component, model in models.items():
        state = {k: v.detach().cpu().contiguous() for k, v in lora_state(model).items()}
        ranks = {k.rsplit(".lora_A", 1)[0]: v.shape[0] for k, v in state.items() if ".lora_A." in k}
        config = formats.lora_config(ranks, {m: r * scale for m, r in ranks.items()})
        components[component] = formats.ComponentLora(state, config)
    return formats.AdapterWeights(components)


def write(pipe, adapter, target: Path, options, training: dict) -> Path:
    from ...lora import formats

    metadata = formats.header_metadata(adapter, base_model={"name": pipe.model.name, "fingerprint": pipe.fingerprint()},
                                       title=options.name, trigger_words=list(options.triggers), training=training)
    return formats.write_adapter(target, adapter, metadata, overwrite=options.overwrite)


class Validation:
    """A grid per validation: for each prompt a row without the adapter (made once) and a row with it."""

    def __init__(self, pipe, options, width: int, height: int, run_dir: Path):
        self.pipe, self.options, self.folder = pipe, options, run_dir / "validation"
        self.decoder = replace(pipe.model.decoder_defaults, width=width, height=height)
        self.base_rows = {}

    def images(self, prompt: str):
        return self.pipe(prompt, num_images=VALIDATION_IMAGES, seed=self.options.seed, decoder=self.decoder,
                         progress=False).images

    def grid(self, step: int) -> Path:
        from diffusers.utils.peft_utils import set_adapter_layers

        from ...grid import prompt_grid

        models = [getattr(self.pipe, c) for c in self.options.components]
        rows = []
        for prompt in self.options.validation_prompts:
            if prompt not in self.base_rows:
                for model in models:
                    set_adapter_layers(model, enabled=False)
                try:
                    self.base_rows[prompt] = self.images(prompt)
                finally:
                    for model in models:
                        set_adapter_layers(model, enabled=True)
            rows += [(f"base: {prompt}", self.base_rows[prompt]), (f"step {step}: {prompt}", self.images(prompt))]
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"step-{step:06d}.png"
        prompt_grid(rows, tile=min(128, max(self.decoder.width, 64))).save(path)
        return path
