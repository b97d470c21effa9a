"""Latents the diffusion decoder draws, for the VAE's decoder to learn from (stage 2, continued after stage 4).

A VAE decoder trained only on its encoder's latents meets different ones at generation time: the U-Net's. Here a
finished U-Net re-draws encoder latents the way an image-to-image call does (SDEdit, Meng et al. 2022, "SDEdit:
Guided Image Synthesis and Editing with Stochastic Differential Equations"): the latent of a training image is noised
to `strength` of the schedule and denoised with the pipeline's own sampler and classifier-free guidance, conditioned on
the image's CLIP embedding and caption. The layout survives that, so the original image is still the right target,
and the VAE's decoder learns to draw the U-Net's latents as the images they stand for.

The U-Net's latents are made once up front (`cache_images`) from their own data stream, `focus.share` of them from the
VAE's focus cell (train/base/vae.py); each VAE step mixes `share` of them into its batch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from ...data import shapes
from ...errors import UserError
from ...schedulers import make_decoder_scheduler, stepper
from .clip import embed_images, load_frozen_clip
from .config import TrainConfig
from .data import ShapesBatch, focus_attributes, step_rng, tokenize, training_batch

STREAM_OFFSET = 7  # the generated examples' data stream is the VAE's seed + this (never a VAE batch of its own)
FOCUS_PURPOSE = 1  # step_rng purpose of a cache chunk's focus-cell images


def load_decoder(folder: str):
    """(U-Net, its shipped scheduler) of a finished decoder (a folder holding unet/ and scheduler/)."""
    from diffusers import DDPMScheduler

    if not (Path(folder) / "unet").is_dir():
        raise UserError(f"vae.generated.decoder_from {folder!r} holds no unet/ folder")
    unet = UNet2DConditionModel.from_pretrained(Path(folder) / "unet", torch_dtype=torch.float32)
    return unet.eval().requires_grad_(False), DDPMScheduler.from_pretrained(Path(folder) / "scheduler")


@torch.no_grad()
def redraw(config: TrainConfig, vae, unet, shipped_scheduler, clip, batch, seed: int) -> torch.Tensor:
    """Unscaled latents (B, C, h, w): the batch's encoder latents noised to `strength` and denoised by the U-Net."""
    cfg = config.vae.generated
    tokenizer, text_encoder, image_encoder = clip
    scheduler = make_decoder_scheduler(shipped_scheduler, cfg.scheduler)
    scheduler.set_timesteps(cfg.steps)
    timesteps = scheduler.timesteps
    first = int((timesteps > cfg.strength * scheduler.config.num_train_timesteps).sum())  # steps the strength skips
    if first >= len(timesteps):
        raise UserError(f"vae.generated.strength {cfg.strength} leaves no denoising step of {cfg.steps}")
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(first)
    scale = vae.config.scaling_factor
    generator = torch.Generator().manual_seed(seed)
    clean = vae.encode(batch.pixels()).latent_dist.mean * scale  # (B, C, h, w)
    noise = torch.randn(clean.shape, generator=generator)
    latents = scheduler.add_noise(clean, noise, timesteps[first:first + 1])  # (B, C, h, w)

    count = len(batch.images)
    image_embeds = embed_images(config, image_encoder, batch.images, count)  # (B, D)
    zero_image = image_encoder(torch.zeros(1, 3, *batch.images.shape[1:3])).image_embeds  # (1, D)
    condition = torch.cat([zero_image.expand(count, -1), image_embeds])  # (2B, D)
    token_ids, _ = tokenize(tokenizer, [""] * count + batch.captions)
    states = text_encoder(token_ids).last_hidden_state if config.decoder.text_conditioning else None  # (2B, T, D)
    step = stepper(scheduler)
    for i, t in enumerate(timesteps[first:], start=first):
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)  # (2B, C, h, w)
        unconditional, conditional = unet(model_input, t, encoder_hidden_states=states,
                                          added_cond_kwargs={"image_embeds": condition}).sample.chunk(2)
        guided = unconditional + cfg.guidance * (conditional - unconditional)  # (B, C, h, w)
        next_t = timesteps[i + 1] if i + 1 < len(timesteps) else None
        latents = step(guided, t, latents, next_t, [generator] * count)
    return latents / scale


def generated_cache(config: TrainConfig, vae, clip_dir: Path):
    """(latents (N, C, h, w), target pixels (N, 3, 64, 64)) made by the finished U-Net, or None when share is 0."""
    cfg = config.vae.generated
    if cfg.share <= 0:
        return None
    if not cfg.decoder_from:
        raise UserError("vae.generated.share > 0 needs vae.generated.decoder_from (a finished decoder folder)")
    from tqdm.auto import tqdm

    unet, shipped = load_decoder(cfg.decoder_from)
    clip = load_frozen_clip(clip_dir)
    chunk = config.vae.train.batch_size
    latents, pixels = [], []
    seed = config.vae.train.seed + STREAM_OFFSET
    focus = focus_attributes(config.vae.focus)
    focused = round(chunk * config.vae.focus.share)
    for k in tqdm(range(-(-cfg.cache_images // chunk)), desc="generated latents", dynamic_ncols=True):
        batch = training_batch(seed, k, chunk - focused)
        if focused:
            focus_seed = int(step_rng(seed, k, FOCUS_PURPOSE).integers(2**63))
            batch = ShapesBatch.concat([batch, ShapesBatch(*shapes.generate(focus_seed, focused, fixed=focus))])
        latents.append(redraw(config, vae, unet, shipped, clip, batch, seed=int(np.uint32(seed * 100_003 + k))))
        pixels.append(batch.pixels())
    return torch.cat(latents)[:cfg.cache_images], torch.cat(pixels)[:cfg.cache_images]
