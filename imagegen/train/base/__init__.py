"""Training the embedded default "shapes" model from scratch: CLIP -> VAE -> diffusion prior -> latent U-Net decoder.

One module per stage (`clip`, `vae`, `prior`, `decoder`), the shared optimisation loop (`loop`), the streamed data
(`data`), the recipe (`config`, read from configs/train/shapes.toml), the command's options (`options`) and the
entry point (`run`):

    imagegen train-base --config configs/train/shapes.toml --out imagegen/weights/shapes [--resume]
"""
