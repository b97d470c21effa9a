"""Stage 3: the diffusion prior of unCLIP (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with
CLIP Latents"), diffusers' PriorTransformer: a causal transformer that denoises a CLIP image embedding conditioned on
the CLIP text embedding and the text token states, and predicts the clean embedding directly (`prediction_type =
"sample"`), as DALL-E 2 and Kandinsky 2.2 do.

It works on normalised embeddings: `clip_mean` / `clip_std` (zero when built!) are set to the per-dimension statistics
of the frozen image encoder's embeddings, the training target is (embedding - mean) / std, and the pipeline's
`post_process_latents` undoes it. Noising follows the UnCLIPScheduler's own betas (squaredcos_cap_v2) through its
`add_noise`. A fraction of captions is replaced by "" so classifier-free guidance has the unconditional model the
pipeline asks for (it encodes "" as the negative prompt).

Embedding the images costs about as much as the prior's own step, so with `cache_images` that many images are embedded
once up front; each step then draws a batch of them and writes each a fresh caption (the grammar's random choice of
stated attributes and paraphrase), so the prior still sees every partial caption of an image. An EMA of the weights
(`ema_decay`), as the decoder keeps, is what is saved.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import PriorTransformer, UnCLIPScheduler
from diffusers.training_utils import EMAModel

from ...data import shapes
from ...errors import UserError
from . import loop
from .clip import embed_images, load_frozen_clip
from .config import TrainConfig
from .data import heldout_batch, step_rng, tokenize, training_batch

UNCONDITIONAL_PROMPT = ""  # the pipeline's default negative prompt


def build_prior(config: TrainConfig) -> PriorTransformer:
    cfg = config.prior
    return PriorTransformer(num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim, num_layers=cfg.layers,
                            embedding_dim=config.clip.embed_dim, num_embeddings=config.clip.max_tokens)


def build_scheduler(config: TrainConfig) -> UnCLIPScheduler:
    cfg = config.prior
    return UnCLIPScheduler(num_train_timesteps=cfg.num_train_timesteps, variance_type="fixed_small_log",
                           prediction_type="sample", clip_sample=True, clip_sample_range=cfg.clip_sample_range)


@torch.no_grad()
def encode_text(tokenizer, text_encoder, captions: list[str]):
    """As the pipeline: pooled projected embedding (B, D), token states (B, T, D), attention mask (B, T) bool."""
    input_ids, mask = tokenize(tokenizer, captions)
    out = text_encoder(input_ids)
    return out.text_embeds, out.last_hidden_state, mask


# step_rng purposes of a cached step: which cached images, and their captions (purpose 0 draws the images themselves)
CACHE_DRAW, CAPTION_DRAW = 1, 2


def embedding_cache(config: TrainConfig, image_encoder) -> tuple[torch.Tensor, list[shapes.ShapeAttributes]] | None:
    """Image embeddings (N, D) and attributes of the first `cache_images` images of the training stream, or None."""
    cfg = config.prior
    if cfg.cache_images <= 0:
        return None
    from tqdm.auto import tqdm

    embeds, attributes = [], []
    for step in tqdm(range(-(-cfg.cache_images // cfg.train.batch_size)), desc="prior cache", dynamic_ncols=True):
        batch = training_batch(cfg.train.seed, step, cfg.train.batch_size)
        embeds.append(embed_images(config, image_encoder, batch.images, cfg.train.batch_size))  # (B, D)
        attributes.extend(batch.attributes)
    return torch.cat(embeds)[:cfg.cache_images], attributes[:cfg.cache_images]


def initial_prior(config: TrainConfig) -> PriorTransformer:
    cfg = config.prior
    prior = build_prior(config)
    if cfg.init_from:  # continue a finished prior (its clip_mean / clip_std come with it)
        if not (Path(cfg.init_from) / "prior").is_dir():
            raise UserError(f"prior.init_from {cfg.init_from!r} holds no prior/ folder; use \"\" to start from "
                            "random weights")
        trained = PriorTransformer.from_pretrained(Path(cfg.init_from) / "prior", torch_dtype=torch.float32)
        prior.load_state_dict(trained.state_dict())  # strict: the architectures must agree
    return prior


def train_prior(config: TrainConfig, run_dir: Path) -> dict:
    cfg = config.prior
    stage_dir = run_dir / "prior"
    tokenizer, text_encoder, image_encoder = load_frozen_clip(run_dir / "clip" / "final")
    prior = initial_prior(config)
    scheduler = build_scheduler(config)

    if not cfg.init_from:
        stats = training_batch(cfg.stats_seed, 0, cfg.stats_images)
        stats_embeds = embed_images(config, image_encoder, stats.images, cfg.train.batch_size)  # (N, D)
        prior.clip_mean.data = stats_embeds.mean(0, keepdim=True)  # (1, D)
        prior.clip_std.data = stats_embeds.std(0, keepdim=True)  # (1, D)
    prior.clip_mean.requires_grad_(False)
    prior.clip_std.requires_grad_(False)
    trained = [p for p in prior.parameters() if p.requires_grad]
    ema = None if cfg.ema_decay <= 0 else EMAModel(
        trained, decay=cfg.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=cfg.ema_power, foreach=True)
    cache = embedding_cache(config, image_encoder)

    def loss_fn(step: int):
        if cache is None:
            batch = training_batch(cfg.train.seed, step, cfg.train.batch_size)
            image_embeds = embed_images(config, image_encoder, batch.images, cfg.train.batch_size)  # (B, D)
            captions = batch.captions
        else:  # the draw depends on (seed, step) only, so a resumed run sees the same batches
            rows = step_rng(cfg.train.seed, step, CACHE_DRAW).integers(0, len(cache[1]), cfg.train.batch_size)
            image_embeds = cache[0][torch.from_numpy(rows)]  # (B, D)
            caption_rng = step_rng(cfg.train.seed, step, CAPTION_DRAW)
            captions = [shapes.caption(cache[1][row], caption_rng) for row in rows.tolist()]
        target = (image_embeds - prior.clip_mean) / prior.clip_std  # (B, D), about unit variance per dimension
        dropped = torch.rand(len(captions)) < cfg.condition_dropout
        captions = [UNCONDITIONAL_PROMPT if drop else c for c, drop in zip(captions, dropped.tolist())]
        text_embeds, token_states, mask = encode_text(tokenizer, text_encoder, captions)  # (B, D), (B, T, D), (B, T)
        timesteps = torch.randint(0, cfg.num_train_timesteps, (len(captions),))  # (B,)
        noisy = scheduler.add_noise(target, torch.randn_like(target), timesteps)  # (B, D)
        with loop.autocast(cfg.train.bf16):
            predicted = prior(noisy, timestep=timesteps, proj_embedding=text_embeds,
                              encoder_hidden_states=token_states, attention_mask=mask).predicted_image_embedding
        loss = F.mse_loss(predicted.float(), target)
        return loss, {}

    metrics = loop.train("prior", stage_dir, prior, loss_fn, cfg.train, config.run, ema=ema)
    if ema is not None:
        ema.copy_to(trained)  # the EMA weights are the model
    final = stage_dir / "final"
    loop.save_model(prior, final / "prior", config.run.other_dtype)
    scheduler.save_pretrained(final / "scheduler")
    metrics["embedding_std_mean"] = round(prior.clip_std.mean().item(), 5)
    metrics.update(evaluate(config, tokenizer, text_encoder, image_encoder, prior, scheduler))
    return metrics


@torch.no_grad()
def sample(prior: PriorTransformer, scheduler: UnCLIPScheduler, text, unconditional, steps: int, guidance: float,
           generator: torch.Generator) -> torch.Tensor:
    """Image embeddings (N, D) for encoded texts, with classifier-free guidance: the pipeline's sampling loop."""
    scheduler = UnCLIPScheduler.from_config(scheduler.config)
    scheduler.set_timesteps(steps)
    embeds, states, mask = (torch.cat([u, c]) for u, c in zip(unconditional, text))  # (2N, D), (2N, T, D), (2N, T)
    count = len(text[0])
    latents = torch.randn(count, prior.config.embedding_dim, generator=generator) * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        predicted = prior(torch.cat([latents] * 2), timestep=t, proj_embedding=embeds, encoder_hidden_states=states,
                          attention_mask=mask).predicted_image_embedding  # (2N, D)
        unconditioned, conditioned = predicted.chunk(2)
        predicted = unconditioned + guidance * (conditioned - unconditioned)  # (N, D)
        next_t = timesteps[i + 1] if i + 1 < len(timesteps) else None
        latents = scheduler.step(predicted, t, latents, prev_timestep=next_t, generator=generator).prev_sample
    return prior.post_process_latents(latents)  # (N, D) un-normalised


@torch.no_grad()
def evaluate(config: TrainConfig, tokenizer, text_encoder, image_encoder, prior, scheduler) -> dict:
    """Mean cosine similarity to the true image embedding, on held-out pairs, of: the prior's sample; the text
    embedding itself (what a decoder conditioned on text alone would get); the mean image embedding (a prior that
    ignores the text). Both for the full-grammar caption and for the generator's (partial) caption."""
    cfg = config.prior
    batch = heldout_batch(config.data.heldout_seed, cfg.eval_images)
    true_embeds = embed_images(config, image_encoder, batch.images, cfg.train.batch_size)  # (N, D)
    unconditional = [x.expand(cfg.eval_images, *x.shape[1:])
                     for x in encode_text(tokenizer, text_encoder, [UNCONDITIONAL_PROMPT])]
    generator = torch.Generator().manual_seed(config.data.heldout_seed)
    results = {"eval_pairs": cfg.eval_images, "eval_steps": cfg.eval_steps, "eval_guidance": cfg.eval_guidance}
    cosine_to_mean = F.cosine_similarity(prior.clip_mean.expand_as(true_embeds), true_embeds).mean().item()
    results["cosine_mean_embedding"] = round(cosine_to_mean, 4)
    for kind, captions in (("full_caption", [shapes.full_caption(a) for a in batch.attributes]),
                           ("partial_caption", batch.captions)):
        text = encode_text(tokenizer, text_encoder, captions)
        sampled = sample(prior, scheduler, text, unconditional, cfg.eval_steps, cfg.eval_guidance, generator)
        results[f"cosine_prior_sample_{kind}"] = round(F.cosine_similarity(sampled, true_embeds).mean().item(), 4)
        results[f"cosine_text_embedding_{kind}"] = round(F.cosine_similarity(text[0], true_embeds).mean().item(), 4)
    return results


def load_prior_parts(folder: Path) -> tuple[PriorTransformer, UnCLIPScheduler]:
    """The finished prior and its scheduler (folder = the stage's final/ folder)."""
    prior = PriorTransformer.from_pretrained(folder / "prior", torch_dtype=torch.float32)
    return prior.eval().requires_grad_(False), UnCLIPScheduler.from_pretrained(folder / "scheduler")
