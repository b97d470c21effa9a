"""The ceiling a VAE sets on prompt adherence: the pixel oracle reads fresh ground-truth renders of the shapes world and
the VAE's reconstructions of the same renders, side by side. A decoder that makes the latents the VAE encoder would
make can do no better than the second row (the default model's eval and the example adapters' evals are read
against it).

With `--lora NAME`, the VAE decoder carries that adapter's `vae` part (imagegen train-lora --components ...,vae).
Below the table, the shape accuracy of the reconstructions for every (shape, size) cell, worst first: where a VAE
decoder loses shapes (v0.7: small stars drawn as discs; `[vae.focus]` of the training recipe aims at that cell).

Run alone:  python benchmarks/vae_ceiling.py [--model shapes] [--images 200] [--seed 777] [--style filled|outline]
            [--lora outline]
"""
import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import imagegen  # noqa: E402
from imagegen.data import shapes  # noqa: E402
from imagegen.evaluation import oracle  # noqa: E402
from imagegen.train.base.data import ShapesBatch  # noqa: E402
from imagegen.train.base.vae import encode  # noqa: E402

ATTRIBUTES = ("shape", "colour", "background", "size", "position", "style")


def accuracy(images: np.ndarray, attributes) -> dict[str, float]:
    totals = dict.fromkeys(ATTRIBUTES + ("all",), 0)
    for image, attrs in zip(images, attributes):
        wanted = {name: getattr(attrs, name) for name in ATTRIBUTES}
        for name, correct in oracle.score(oracle.read_image(image), wanted).items():
            totals[name] += correct
    return {name: round(100 * count / len(images), 1) for name, count in totals.items()}


def shape_accuracy_by_cell(images: np.ndarray, attributes) -> list[tuple[str, str, int, int]]:
    """(shape, size, right, count) for every (shape, size) cell present, the lowest share right first."""
    right, count = {}, {}
    for image, attrs in zip(images, attributes):
        cell = (attrs.shape, attrs.size)
        count[cell] = count.get(cell, 0) + 1
        right[cell] = right.get(cell, 0) + (oracle.read_image(image).shape == attrs.shape)
    return sorted(((*cell, right[cell], count[cell]) for cell in count), key=lambda row: (row[2] / row[3], row[:2]))


@torch.no_grad()
def reconstruct(vae, batch: ShapesBatch, chunk: int = 50) -> np.ndarray:
    """uint8 (N, 64, 64, 3): each image through the VAE, from its posterior mean (as the decoder stage trains on)."""
    pixels, out = batch.pixels(), []  # (N, 3, 64, 64) in [-1, 1]
    for start in range(0, len(pixels), chunk):
        latents = encode(vae, pixels[start:start + chunk], "mean")  # (B, 4, 16, 16)
        decoded = vae.decode(latents).sample.clamp(-1, 1)  # (B, 3, 64, 64)
        out.append(((decoded + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--style", default="filled", choices=shapes.STYLES)
    parser.add_argument("--lora", help="an adapter whose vae part the decoder carries")
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = imagegen.load_pipeline(args.model)
    if args.lora:
        name = pipe.load_lora(args.lora, {"vae": 1.0})
        if "vae" not in pipe.loras.loaded_components(name):
            parser.error(f"adapter {args.lora!r} has no vae part")
    vae = pipe.vae  # an AutoencoderKL (the shapes model's)
    batch = ShapesBatch(*shapes.generate(args.seed, args.images, style=args.style))
    images, attributes = batch.images, batch.attributes
    reconstructions = reconstruct(vae, batch)
    truth, rebuilt = accuracy(images, attributes), accuracy(reconstructions, attributes)
    psnr = 10 * np.log10(255.0 ** 2 / np.mean((reconstructions.astype(float) - images) ** 2))
    lora = f" + LoRA {args.lora} (vae)" if args.lora else ""
    print(f"{args.images} {args.style} renders (seed {args.seed}), oracle accuracy in %, model {args.model}{lora}")
    print("attribute      " + " ".join(f"{name:>10}" for name in truth))
    print("renders        " + " ".join(f"{value:>10}" for value in truth.values()))
    print("reconstructed  " + " ".join(f"{value:>10}" for value in rebuilt.values()))
    cells = shape_accuracy_by_cell(reconstructions, attributes)
    print("reconstructed shape right by (shape, size), worst first: "
          + ", ".join(f"{shape} {size} {right}/{count}" for shape, size, right, count in cells))
    print(f"RESULT {args.style}: all attributes {rebuilt['all']}% on reconstructions vs {truth['all']}% on the renders "
          f"(ratio {rebuilt['all'] / max(truth['all'], 1e-9):.3f}); colour {rebuilt['colour']}%, shape "
          f"{rebuilt['shape']}%, PSNR {psnr:.1f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
