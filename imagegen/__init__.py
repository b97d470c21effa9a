"""imagegen: text-to-image diffusion in the unCLIP design (CLIP text encoder -> diffusion prior -> latent U-Net
decoder -> VAE), as in Kandinsky 2.2.

    import imagegen
    pipe = imagegen.load_pipeline("shapes")
    result = pipe(["a red circle", "a blue square"], seed=[0, 1], num_images=2, loras=["heart:0.8"])
    result.records[0].to_infotext()
    result.save("outputs")

Heavy modules (torch, diffusers) are imported on first use, so `import imagegen` and `imagegen --help` stay fast.
"""
__version__ = "0.1.0"

__all__ = [
    "load_pipeline",
    "UnCLIPPipeline",
    "PriorSettings",
    "DecoderSettings",
    "RuntimeSettings",
    "MixItem",
    "GenerationResult",
    "GenerationRecord",
    "LoraRequest",
    "StepInfo",
    "UserError",
]

# name -> the module that defines it (imported when the name is first used)
_HOMES = {
    "load_pipeline": "loading",
    "UnCLIPPipeline": "pipeline",
    "StepInfo": "steps",
    "PriorSettings": "settings",
    "DecoderSettings": "settings",
    "RuntimeSettings": "settings",
    "MixItem": "result",
    "GenerationResult": "result",
    "GenerationRecord": "record",
    "LoraRequest": "lora.requests",
    "UserError": "errors",
}


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module 'imagegen' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)


def __dir__():
    return sorted(__all__ + ["__version__"])
