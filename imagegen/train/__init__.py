"""Training the embedded default "shapes" model from scratch: CLIP -> VAE -> diffusion prior -> latent U-Net decoder.

One module per stage (`clip`, `vae`, `prior`, `decoder`), the shared optimisation loop (`loop`), the streamed data
(`data`), the config (`config`, read from configs/train/shapes.toml) and the entry point (`run`):

    python -m imagegen.train.run --config configs/train/shapes.toml --out imagegen/weights/shapes [--resume]

Generation code never imports this package.
"""


def train_base(config_path, out_dir, resume: bool = False, **options):
    """Run every unfinished stage, then write the model to `out_dir` (see `imagegen.train.run.train_base`)."""
    from .run import train_base as _train_base

    return _train_base(config_path, out_dir, resume=resume, **options)
