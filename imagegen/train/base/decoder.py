"""Stage 4: the latent diffusion decoder of Kandinsky 2.2, diffusers' UNet2DConditionModel conditioned on the CLIP
image embedding only (`addition_embed_type="image"`, `encoder_hid_dim_type="image_proj"`: the embedding is added to
the time embedding and projected to the cross-attention tokens). Trained with the DDPM noise-prediction objective (Ho
et al. 2020, "Denoising Diffusion Probabilistic Models") on VAE latents, with optional Min-SNR-gamma loss weighting
(Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"), and an exponential moving average
of the weights, which is what is saved.

The frozen VAE encodes images to latents (times its scaling_factor, as the pipeline divides on decode) and the frozen
image encoder embeds them. Encoding costs a third of a step, so `cache_batches` batches are encoded once up front and
each step draws a random batch of examples from that cache (0 = encode every batch fresh). A fraction of embeddings is replaced by the embedding of
an all-zero image, the pipeline's unconditional input for classifier-free guidance (`zero_image_embed`).

With `text_conditioning`, the U-Net also cross-attends to the caption's CLIP token states (diffusers'
`encoder_hid_dim_type="text_image_proj"`, the Kandinsky 2.1 arrangement): the image embedding of a small CLIP carries
colours well but shape and position weakly, and the tokens name them outright. Condition dropout then replaces the
caption by the empty prompt too, the pipeline's unconditional input.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel, compute_snr

from ...data import shapes
from ...errors import UserError
from . import loop
from .clip import embed_images, load_frozen_clip
from .config import TrainConfig
from .data import ShapesBatch, heldout_batch, tokenize, training_batch
from .vae import encode, load_frozen_vae


def build_unet(config: TrainConfig) -> UNet2DConditionModel:
    cfg = config.decoder
    latent_channels = config.vae.latent_channels
    return UNet2DConditionModel(
        sample_size=shapes.IMAGE_SIZE // 2 ** (len(config.vae.channels) - 1),
        in_channels=latent_channels, out_channels=latent_channels,  # epsilon only: no learned variance
        addition_embed_type="image", encoder_hid_dim=config.clip.embed_dim,
        encoder_hid_dim_type="text_image_proj" if cfg.text_conditioning else "image_proj",
        cross_attention_dim=cfg.cross_attention_dim, attention_head_dim=cfg.attention_head_dim,
        block_out_channels=tuple(cfg.channels), layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_groups,
        down_block_types=tuple(cfg.down_blocks), up_block_types=tuple(cfg.up_blocks), mid_block_type=cfg.mid_block,
        resnet_time_scale_shift="scale_shift", class_embed_type=None)


def build_scheduler(config: TrainConfig) -> DDPMScheduler:
    cfg = config.decoder
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule="linear",
                         beta_start=cfg.beta_start, beta_end=cfg.beta_end, clip_sample=False,
                         prediction_type="epsilon", variance_type="fixed_small")


@torch.no_grad()
def zero_image_embed(image_encoder) -> torch.Tensor:
    """(1, D): the embedding of an all-zero (normalised) image, exactly as the pipeline computes it."""
    size = image_encoder.config.image_size
    return image_encoder(torch.zeros(1, 3, size, size)).image_embeds


@torch.no_grad()
def conditioning(config: TrainConfig, batch: ShapesBatch, vae, image_encoder, tokenizer):
    """Scaled VAE latents (B, 4, 16, 16), image embeddings (B, D) and caption token ids (B, T) of a batch."""
    latents = encode(vae, batch.pixels(), config.vae.latents) * vae.config.scaling_factor
    image_embeds = embed_images(config, image_encoder, batch.images, len(batch.images))
    token_ids, _ = tokenize(tokenizer, batch.captions)
    return latents, image_embeds, token_ids


@torch.no_grad()
def text_states(text_encoder, token_ids):
    """(B, T, D) token states as the pipeline feeds them (no attention mask, as Kandinsky's prior pipeline)."""
    return text_encoder(token_ids).last_hidden_state


def decoder_batch(config: TrainConfig, step: int) -> ShapesBatch:
    cfg = config.decoder
    return training_batch(cfg.train.seed, step, cfg.train.batch_size, p_keep=dataclasses.asdict(cfg.caption_keep))


def encode_cache(config: TrainConfig, vae, image_encoder, tokenizer):
    """(latents, image embeddings, token ids) of the first `cache_batches` training batches, or None."""
    cfg = config.decoder
    if cfg.cache_batches <= 0:
        return None
    from tqdm.auto import tqdm

    parts = [conditioning(config, decoder_batch(config, step), vae, image_encoder, tokenizer)
             for step in tqdm(range(cfg.cache_batches), desc="decoder cache", dynamic_ncols=True)]
    return tuple(torch.cat(column) for column in zip(*parts))


def train_decoder(config: TrainConfig, run_dir: Path) -> dict:
    cfg = config.decoder
    stage_dir = run_dir / "decoder"
    tokenizer, text_encoder, image_encoder = load_frozen_clip(run_dir / "clip" / "final")
    vae = load_frozen_vae(run_dir / "vae" / "final")
    unet = build_unet(config)
    if cfg.init_from:  # fine-tune a finished decoder (a folder holding unet/) instead of starting from random weights
        if not (Path(cfg.init_from) / "unet").is_dir():
            raise UserError(f"decoder.init_from {cfg.init_from!r} holds no unet/ folder; use \"\" to start from "
                            "random weights")
        trained = UNet2DConditionModel.from_pretrained(Path(cfg.init_from) / "unet", torch_dtype=torch.float32)
        unet.load_state_dict(trained.state_dict())  # strict: the architectures must agree
    scheduler = build_scheduler(config)
    # Warm-up: decay = 1 - (1 + step)^-power, capped at ema_decay, so early EMA weights are not stuck at the init.
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=cfg.ema_power,
                   foreach=True, model_cls=UNet2DConditionModel, model_config=unet.config)
    unconditional = zero_image_embed(image_encoder)  # (1, D)
    empty_ids, _ = tokenize(tokenizer, [""])  # (1, T): the unconditional caption
    cache = encode_cache(config, vae, image_encoder, tokenizer)  # latents, embeddings, token ids; or None

    def loss_fn(step: int):
        if cache is None:
            batch = decoder_batch(config, step)
            latents, image_embeds, token_ids = conditioning(config, batch, vae, image_encoder, tokenizer)
        else:  # the draw depends on (seed, step) only, so a resumed run sees the same batches
            picker = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
            rows = torch.randint(0, len(cache[0]), (cfg.train.batch_size,), generator=picker)  # (B,)
            latents, image_embeds, token_ids = (part[rows] for part in cache)  # (B, 4, 16, 16), (B, D), (B, T)
        dropped = torch.rand(len(latents), 1) < cfg.condition_dropout  # (B, 1)
        image_embeds = torch.where(dropped, unconditional, image_embeds)  # (B, D)
        token_ids = torch.where(dropped, empty_ids, token_ids)  # (B, T)
        states = text_states(text_encoder, token_ids) if cfg.text_conditioning else None  # (B, T, D)
        noise = torch.randn_like(latents)  # (B, 4, 16, 16)
        timesteps = torch.randint(0, cfg.num_train_timesteps, (len(latents),))  # (B,)
        noisy = scheduler.add_noise(latents, noise, timesteps)  # (B, 4, 16, 16)
        with loop.autocast(cfg.train.bf16):
            predicted = unet(noisy, timesteps, encoder_hidden_states=states,
                             added_cond_kwargs={"image_embeds": image_embeds}).sample  # (B, 4, 16, 16)
        per_example = F.mse_loss(predicted.float(), noise, reduction="none").mean(dim=(1, 2, 3))  # (B,)
        if cfg.min_snr_gamma > 0:
            # Min-SNR-gamma for epsilon prediction: weight min(SNR, gamma) / SNR, so the many easy low-noise steps
            # stop dominating the gradient.
            snr = compute_snr(scheduler, timesteps)  # (B,)
            loss = (per_example * snr.clamp(max=cfg.min_snr_gamma) / snr).mean()
        else:
            loss = per_example.mean()
        return loss, {"mse": per_example.mean().item()}

    metrics = loop.train("decoder", stage_dir, unet, loss_fn, cfg.train, config.run, ema=ema)
    metrics.update(evaluate(config, unet, ema, scheduler, vae, image_encoder, unconditional, tokenizer, text_encoder))
    ema.copy_to(unet.parameters())  # the EMA weights are the model
    final = stage_dir / "final"
    loop.save_model(unet, final / "unet", config.run.other_dtype)
    scheduler.save_pretrained(final / "scheduler")
    return metrics


@torch.no_grad()
def evaluate(config: TrainConfig, unet, ema: EMAModel, scheduler, vae, image_encoder, unconditional, tokenizer,
             text_encoder) -> dict:
    """Held-out noise-prediction MSE at evenly spread timesteps with fixed noise, for the raw and the EMA weights, and
    for the EMA weights without the condition (the gap is how much the image embedding tells the U-Net)."""
    cfg = config.decoder
    batch = heldout_batch(config.data.heldout_seed, cfg.eval_images)
    latents, image_embeds, token_ids = conditioning(config, batch, vae, image_encoder, tokenizer)
    use_text = cfg.text_conditioning
    states = text_states(text_encoder, token_ids) if use_text else None  # (N, T, D)
    empty_ids, _ = tokenize(tokenizer, [""])
    empty_states = text_states(text_encoder, empty_ids).expand(len(latents), -1, -1) if use_text else None
    generator = torch.Generator().manual_seed(config.data.heldout_seed)
    noise = torch.randn(latents.shape, generator=generator)  # (N, 4, 16, 16)
    timesteps = torch.linspace(0, cfg.num_train_timesteps - 1, len(latents)).long()  # (N,)
    noisy = scheduler.add_noise(latents, noise, timesteps)

    def mse(condition: torch.Tensor, token_states) -> float:
        errors = []
        for i in range(0, len(latents), cfg.train.batch_size):
            part = slice(i, i + cfg.train.batch_size)
            predicted = unet(noisy[part], timesteps[part],
                             encoder_hidden_states=None if token_states is None else token_states[part],
                             added_cond_kwargs={"image_embeds": condition[part]}).sample
            errors.append(F.mse_loss(predicted, noise[part], reduction="none").mean(dim=(1, 2, 3)))
        return round(torch.cat(errors).mean().item(), 5)

    results = {"eval_images": cfg.eval_images, "eval_mse_raw": mse(image_embeds, states)}
    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    results["eval_mse_ema"] = mse(image_embeds, states)
    results["eval_mse_ema_unconditional"] = mse(unconditional.expand_as(image_embeds), empty_states)
    ema.restore(unet.parameters())
    return results
