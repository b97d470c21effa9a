"""Stage 2: the KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis
with Latent Diffusion Models"), diffusers' AutoencoderKL: 64x64x3 pixels <-> 16x16x4 latents.

Loss: MSE + L1 on the reconstruction of a posterior sample, plus a tiny KL term that keeps the latent space smooth
without blurring. At the end the latent std is measured on held-out images and `scaling_factor = 1 / std` is stored
in the model config, so the decoder stage diffuses latents of unit variance; the pipeline divides by it on decode.

A finished VAE can be continued (`init_from`) with its encoder frozen (`train_encoder = false`): then the latents,
their scaling factor and every model trained on them stay valid, and only the decoder learns to draw them more
sharply. The batches can mix in hearts and outlined shapes (`heart_share`, `outline_share`): the base models never
see them, but the codec has to reproduce whatever an adapter makes the diffusion decoder draw; and more of the one
cell of the world it draws worst (`focus`: v0.7 drew most small stars as discs, though its latents hold their
points). A frozen-encoder run can also learn from the latents a finished U-Net draws (`generated`,
train/base/generated.py), the ones the decoder meets at generation time.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ...data import shapes
from ...errors import UserError
from . import loop
from .config import TrainConfig
from .data import ShapesBatch, focus_attributes, heldout_batch, step_rng, training_batch
from .generated import generated_cache

LATENT_KINDS = ("mean", "sample")
# step_rng purposes of a VAE batch's parts besides the base world (0)
HEART_PURPOSE, OUTLINE_PURPOSE, GENERATED_PURPOSE, FOCUS_PURPOSE = 1, 2, 3, 4


def build_vae(config: TrainConfig) -> AutoencoderKL:
    cfg = config.vae
    levels = len(cfg.channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
                         block_out_channels=tuple(cfg.channels), layers_per_block=cfg.layers_per_block,
                         down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                         norm_num_groups=cfg.norm_groups, sample_size=shapes.IMAGE_SIZE)


def encode(vae: AutoencoderKL, pixels: torch.Tensor, kind: str) -> torch.Tensor:
    """Unscaled latents (B, C, h, w) of pixels in [-1, 1]: the posterior mean, or a sample of it."""
    posterior = vae.encode(pixels).latent_dist
    return posterior.mean if kind == "mean" else posterior.sample()


def vae_batch(config: TrainConfig, step: int, room: int = 0) -> ShapesBatch:
    """Batch `step`: the base world, with `heart_share` hearts, `outline_share` outlines (every shape) and
    `focus.share` examples of the focus cell mixed in, `room` examples short of the batch size (the U-Net's latents
    fill them)."""
    cfg = config.vae
    size = cfg.train.batch_size
    hearts, outlines = round(size * cfg.heart_share), round(size * cfg.outline_share)
    focused = round(size * cfg.focus.share)
    if hearts + outlines + focused + room > size:
        raise UserError(f"vae: heart_share, outline_share, focus.share and generated.share add up to more than the "
                        f"batch ({hearts} + {outlines} + {focused} + {room} > {size})")
    parts = [training_batch(cfg.train.seed, step, size - hearts - outlines - focused - room)]
    for purpose, count, kind in ((HEART_PURPOSE, hearts, {"shapes": ("heart",)}),
                                 (OUTLINE_PURPOSE, outlines, {"shapes": shapes.ALL_SHAPES, "style": "outline"}),
                                 (FOCUS_PURPOSE, focused, {"fixed": focus_attributes(cfg.focus)})):
        if count:
            seed = int(step_rng(cfg.train.seed, step, purpose).integers(2**63))
            parts.append(ShapesBatch(*shapes.generate(seed, count, **kind)))
    return ShapesBatch.concat(parts)


def load_vae_to_continue(config: TrainConfig) -> AutoencoderKL:
    """A fresh VAE of the recipe's architecture, holding `init_from`'s weights and scaling factor when it is set."""
    cfg = config.vae
    vae = build_vae(config)
    if not cfg.init_from:
        if not cfg.train_encoder:
            raise UserError("vae.train_encoder = false needs vae.init_from (a frozen random encoder learns nothing)")
        return vae
    if not (Path(cfg.init_from) / "config.json").is_file():
        raise UserError(f"vae.init_from {cfg.init_from!r} is not an AutoencoderKL folder (no config.json); use \"\" "
                        "to start from random weights")
    trained = AutoencoderKL.from_pretrained(cfg.init_from, torch_dtype=torch.float32)
    vae.load_state_dict(trained.state_dict())  # strict: the architectures must agree
    vae.register_to_config(scaling_factor=trained.config.scaling_factor)
    if not cfg.train_encoder:
        for part in (vae.encoder, vae.quant_conv):
            part.requires_grad_(False)
    return vae


def train_vae(config: TrainConfig, run_dir: Path) -> dict:
    cfg = config.vae
    if cfg.latents not in LATENT_KINDS:
        raise ValueError(f"vae.latents must be one of {LATENT_KINDS}, got {cfg.latents!r}")
    stage_dir = run_dir / "vae"
    vae = load_vae_to_continue(config)
    if cfg.generated.share > 0 and cfg.train_encoder:
        raise UserError("vae.generated needs vae.train_encoder = false: a learning encoder would leave the U-Net's "
                        "latents behind")
    generated = generated_cache(config, vae, run_dir / "clip" / "final")  # (latents, pixels) or None
    redrawn = round(cfg.train.batch_size * cfg.generated.share) if generated is not None else 0

    def loss_fn(step: int):
        pixels = vae_batch(config, step, room=redrawn).pixels()  # (B - G, 3, 64, 64) in [-1, 1]
        if generated is not None:  # the draw depends on (seed, step) only, so a resumed run sees the same batches
            rows = torch.from_numpy(step_rng(cfg.train.seed, step, GENERATED_PURPOSE).integers(
                0, len(generated[0]), redrawn))  # (G,)
        with loop.autocast(cfg.train.bf16):
            with torch.set_grad_enabled(cfg.train_encoder):
                posterior = vae.encode(pixels).latent_dist  # (B - G, 4, 16, 16) mean and std
            # A sample, not the mean, even for a frozen encoder: the U-Net's latents are never exactly the encoder's,
            # and the posterior's noise keeps the decoder robust to that. (Decoding means made sharper
            # reconstructions, PSNR 30.3 dB, but lowered `imagegen eval`'s colour from 96.7% to 94.2%.)
            latents = posterior.sample()
            targets = pixels
            if generated is not None:
                latents = torch.cat([latents, generated[0][rows]])  # (B, 4, 16, 16)
                targets = torch.cat([pixels, generated[1][rows]])  # (B, 3, 64, 64)
            reconstruction = vae.decode(latents).sample.float()  # (B, 3, 64, 64)
        mse = F.mse_loss(reconstruction, targets)
        l1 = F.l1_loss(reconstruction, targets)
        kl = posterior.kl().mean()  # summed over latent elements, mean over the batch
        logs = {"mse": mse.item(), "l1": l1.item(), "kl": kl.item()}
        if generated is not None:
            logs["mse_generated"] = F.mse_loss(reconstruction[len(pixels):], targets[len(pixels):]).item()
        return mse + cfg.l1_weight * l1 + cfg.kl_weight * kl, logs

    metrics = loop.train("vae", stage_dir, vae, loss_fn, cfg.train, config.run)
    metrics.update(measure_and_scale(config, vae, rescale=cfg.train_encoder))
    loop.save_model(vae, stage_dir / "final" / "vae", config.run.other_dtype)
    return metrics


@torch.no_grad()
def measure_and_scale(config: TrainConfig, vae: AutoencoderKL, rescale: bool = True) -> dict:
    """PSNR of held-out reconstructions (from the posterior mean), and the latent statistics; stores 1 / std as the
    VAE's scaling_factor (with `rescale`; a frozen encoder keeps the one the later stages were trained with)."""
    cfg = config.vae
    batch = heldout_batch(config.data.heldout_seed, cfg.eval_images)
    all_pixels = batch.pixels()  # (N, 3, 64, 64)
    squared_errors, latents = [], []
    for start in range(0, cfg.eval_images, cfg.train.batch_size):
        pixels = all_pixels[start:start + cfg.train.batch_size]  # (b, 3, 64, 64)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.mean).sample.clamp(-1, 1)  # (b, 3, 64, 64)
        # PSNR on [0, 1] pixels, per image, then averaged (the usual reporting).
        squared_errors.append(((reconstruction - pixels) / 2).pow(2).mean(dim=(1, 2, 3)))
        latents.append(posterior.mean if cfg.latents == "mean" else posterior.sample())
    per_image_mse = torch.cat(squared_errors)  # (N,)
    latents = torch.cat(latents)  # (N, 4, 16, 16)
    std = latents.std().item()
    if rescale:
        vae.register_to_config(scaling_factor=1 / std)
    return {"psnr_db": round(float((-10 * torch.log10(per_image_mse)).mean()), 3),
            "psnr_of_mean_mse_db": round(-10 * math.log10(per_image_mse.mean().item()), 3),
            "latent_std": round(std, 5), "latent_mean": round(latents.mean().item(), 5),
            "scaling_factor": vae.config.scaling_factor, "eval_images": cfg.eval_images}


def load_frozen_vae(folder: Path) -> AutoencoderKL:
    """The finished VAE (folder = the stage's final/ folder): float32, eval mode, no gradients."""
    return AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32).eval().requires_grad_(False)
