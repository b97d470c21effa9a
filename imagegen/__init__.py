"""imagegen: text-to-image diffusion in the unCLIP design (CLIP text encoder -> diffusion prior -> latent U-Net
decoder -> VAE), as in Kandinsky 2.2.

    import imagegen
    pipe = imagegen.load_pipeline("shapes")
    result = pipe("a red circle", seed=0, num_images=4)
    result.save("outputs")

Heavy modules (torch, diffusers) are imported on first use, so `import imagegen` and `imagegen --help` stay fast.
"""
__version__ = "0.1.0"


def load_pipeline(model: str = "shapes", *, device: str = "cpu", dtype: str = "auto", attention: str = "auto"):
    """A ready UnCLIPPipeline for a preset name, a preset .toml file or a model folder."""
    from .api import load_pipeline as _load

    return _load(model, device=device, dtype=dtype, attention=attention)


def __getattr__(name):
    if name in ("UnCLIPPipeline",):
        from .pipeline import UnCLIPPipeline

        return UnCLIPPipeline
    if name in ("PriorSettings", "DecoderSettings", "RuntimeSettings"):
        from . import settings

        return getattr(settings, name)
    if name == "MixItem":
        from .result import MixItem

        return MixItem
    raise AttributeError(name)
