"""Tiny random models in the exact on-disk layout of Kandinsky 2.2 (a few hundred kB), for tests and benchmarks.

They are written by diffusers' own `KandinskyV22PriorPipeline.save_pretrained` / `KandinskyV22Pipeline.save_pretrained`,
so loading them exercises the same code as a real checkpoint. The tokenizer is the real CLIP tokenizer class over a
characters-only vocabulary (514 tokens) to keep the embedding table small.
"""
from __future__ import annotations

from pathlib import Path

EMBED_DIM = 32  # CLIP projection size = prior embedding size = U-Net image-embedding input
TEXT_TOKENS = 32  # tokenizer length = text positions = prior text tokens
IMAGE_SIZE = 32  # image encoder input side
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def tiny_prior_components(seed: int = 0) -> dict:
    import torch
    from diffusers import PriorTransformer, UnCLIPScheduler
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    from .tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer("bytes", model_max_length=TEXT_TOKENS)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=EMBED_DIM, projection_dim=EMBED_DIM, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=TEXT_TOKENS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=EMBED_DIM, projection_dim=EMBED_DIM, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, image_size=IMAGE_SIZE, patch_size=8, num_channels=3))
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=EMBED_DIM, num_layers=1,
                             num_embeddings=TEXT_TOKENS)
    # The prior un-normalises its output with CLIP statistics; random ones make that step observable.
    prior.clip_mean.data = torch.randn_like(prior.clip_mean) * 0.1
    prior.clip_std.data = 1 + torch.rand_like(prior.clip_std)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                         do_center_crop=True, do_normalize=True, do_resize=True, resample=3,
                                         image_mean=CLIP_MEAN, image_std=CLIP_STD)
    scheduler = UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
                                clip_sample=True, clip_sample_range=10.0)
    return dict(prior=prior, image_encoder=image_encoder, text_encoder=text_encoder, tokenizer=tokenizer,
                scheduler=scheduler, image_processor=image_processor)


def tiny_decoder_components(seed: int = 0, vae: str = "vq", learned_variance: bool = True,
                            reads_text: bool = False) -> dict:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, VQModel

    torch.manual_seed(seed)
    latent_channels = 4
    unet = UNet2DConditionModel(
        in_channels=latent_channels, out_channels=latent_channels * (2 if learned_variance else 1),
        addition_embed_type="image", encoder_hid_dim=EMBED_DIM,
        encoder_hid_dim_type="text_image_proj" if reads_text else "image_proj",  # 2.1-style: tokens + image
        cross_attention_dim=EMBED_DIM, attention_head_dim=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", resnet_time_scale_shift="scale_shift", class_embed_type=None)
    if vae == "vq":
        movq = VQModel(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                       up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), in_channels=3, out_channels=3,
                       latent_channels=latent_channels, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
                       num_vq_embeddings=12, vq_embed_dim=latent_channels)
    elif vae == "kl":
        movq = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, in_channels=3, out_channels=3,
                             latent_channels=latent_channels, layers_per_block=1, norm_num_groups=8, scaling_factor=0.5)
    else:
        raise ValueError(f"vae must be 'vq' or 'kl', got {vae!r}")
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, prediction_type="epsilon",
                              variance_type="learned_range" if learned_variance else "fixed_small")
    return dict(unet=unet, scheduler=scheduler, movq=movq)


def save_tiny_model(folder: str | Path, seed: int = 0, vae: str = "vq", learned_variance: bool = True,
                    reads_text: bool = False) -> Path:
    """Write `folder/prior` and `folder/decoder` with diffusers' own Kandinsky 2.2 pipelines' save_pretrained."""
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

    folder = Path(folder)
    KandinskyV22PriorPipeline(**tiny_prior_components(seed)).save_pretrained(folder / "prior")
    decoder = tiny_decoder_components(seed, vae, learned_variance, reads_text)
    KandinskyV22Pipeline(**decoder).save_pretrained(folder / "decoder")
    return folder
