"""Stage 1: a CLIP text and image encoder trained from scratch with the symmetric contrastive (InfoNCE) loss and a
learned temperature (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision").

Three changes to plain CLIP, because the decoder must recover every attribute (shape, colour, background, size,
position) from the image embedding or from the caption's token states:

* auxiliary linear classification heads on the (normalised) projected image embedding, one per attribute, trained
  with cross-entropy next to the contrastive loss;
* the same heads on the text side, for the attributes a caption states: contrastive loss alone lets the text tower
  forget whatever the image tower cannot see yet (with a shape-blind image tower, "a red circle" and "a red square"
  ended at token-state cosine 0.998), and the decoder reads shape and position from those token states;
* harder batches: half the captions state every attribute (`shapes.full_caption`), and some batches share one shape
  colour and one background, so that only shape, size and position tell their images apart.

Partial captions are often true of several images in a batch ("a circle"); a caption counts as a correct match for
every image it describes (read with `shapes.parse_prompt`), so true matches are never pushed apart as negatives.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer,
                          CLIPVisionConfig, CLIPVisionModelWithProjection)

from ...build.tokenizer import build_clip_tokenizer
from ...errors import UserError
from ...data import shapes
from . import loop
from .config import TrainConfig
from .data import ATTRIBUTE_CLASSES, ShapesBatch, clip_pixels, heldout_batch, step_rng, tokenize, training_batch

BATCH_COMPOSITION = 1  # step_rng purpose: the choices that shape batch k (its images use purpose 0)
# The text heads read unit vectors, whose logits a linear head can only grow slowly: scaled up, they learn in tens of
# steps rather than hundreds (measured on the image side: colour cross-entropy 0.07 vs 1.1 after 150 steps).
TEXT_HEAD_INPUT_SCALE = 10.0


class ContrastiveModel(nn.Module):
    """The two encoders, CLIP's learned logit scale (1 / temperature) and one linear head per attribute."""

    def __init__(self, text_encoder, image_encoder, init_temperature: float, embed_dim: int):
        super().__init__()
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.heads = nn.ModuleDict({name: nn.Linear(embed_dim, len(classes))
                                    for name, classes in ATTRIBUTE_CLASSES.items()})
        self.text_heads = nn.ModuleDict({name: nn.Linear(embed_dim, len(classes))
                                         for name, classes in ATTRIBUTE_CLASSES.items()})


def build_encoders(config: TrainConfig, tokenizer) -> tuple[CLIPTextModelWithProjection, CLIPVisionModelWithProjection]:
    cfg = config.clip
    # Text hidden size = projection size: the prior projects token states with Linear(embedding_dim, ...).
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.embed_dim, projection_dim=cfg.embed_dim,
        intermediate_size=cfg.text_mlp, num_attention_heads=cfg.text_heads, num_hidden_layers=cfg.text_layers,
        max_position_embeddings=cfg.max_tokens, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=cfg.vision_hidden, projection_dim=cfg.embed_dim, intermediate_size=cfg.vision_mlp,
        num_attention_heads=cfg.vision_heads, num_hidden_layers=cfg.vision_layers, image_size=shapes.IMAGE_SIZE,
        patch_size=cfg.patch_size, num_channels=3))
    return text_encoder, image_encoder


def build_image_processor(config: TrainConfig) -> CLIPImageProcessor:
    """The pipeline's image preprocessing (variations); `data.clip_pixels` is the same at 64x64."""
    size = shapes.IMAGE_SIZE
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              do_resize=True, do_center_crop=True, do_normalize=True, resample=3,
                              image_mean=list(config.data.image_mean), image_std=list(config.data.image_std))


def stated_labels(captions: list[str]) -> torch.Tensor:
    """(B, A) class index of each attribute a caption states, -1 where it says nothing about it."""
    rows = []
    for text in captions:
        stated = shapes.parse_prompt(text)
        rows.append([classes.index(stated[name]) if name in stated else -1
                     for name, classes in ATTRIBUTE_CLASSES.items()])
    return torch.tensor(rows)


def true_matches(captions: list[str], image_labels: torch.Tensor) -> torch.Tensor:
    """(B_img, B_txt) float: 1 where caption j is true of image i (always for its own caption), else 0."""
    stated = stated_labels(captions)  # (B, A)
    agrees = (stated[None, :, :] == -1) | (stated[None, :, :] == image_labels[:, None, :])  # (B_img, B_txt, A)
    return (agrees.all(dim=-1) | torch.eye(len(captions), dtype=torch.bool)).float()


def soft_cross_entropy(logits: torch.Tensor, matches: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row against the uniform distribution over its true matches."""
    return F.cross_entropy(logits, matches / matches.sum(dim=1, keepdim=True))


def text_heads_loss(model: ContrastiveModel, text: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Mean cross-entropy of the text heads over the attributes the captions state."""
    stated = stated_labels(captions)  # (B, A), -1 where a caption is silent
    return torch.stack([F.cross_entropy(model.text_heads[name](TEXT_HEAD_INPUT_SCALE * text), stated[:, a],
                                        ignore_index=-1)
                        for a, name in enumerate(ATTRIBUTE_CLASSES) if (stated[:, a] >= 0).any()]).mean()


def make_batch(config: TrainConfig, step: int) -> ShapesBatch:
    """Batch `step`: sometimes one colour + background for all (hard negatives), half the captions complete."""
    cfg = config.clip
    choices = step_rng(cfg.train.seed, step, BATCH_COMPOSITION)
    fixed = None
    if choices.random() < cfg.hard_negative_probability:
        colour, background = choices.choice(len(shapes.COLOUR_NAMES), size=2, replace=False)
        fixed = {"colour": shapes.COLOUR_NAMES[colour], "background": shapes.COLOUR_NAMES[background]}
    batch = training_batch(cfg.train.seed, step, cfg.train.batch_size, fixed)
    use_full = choices.random(len(batch.captions)) < cfg.full_caption_probability
    batch.captions = [shapes.full_caption(a) if full else c
                      for a, c, full in zip(batch.attributes, batch.captions, use_full)]
    return batch


def train_clip(config: TrainConfig, run_dir: Path) -> dict:
    cfg = config.clip
    if not (cfg.train_image_encoder or cfg.train_text_encoder):
        raise UserError("clip: train_image_encoder and train_text_encoder are both false; set at least one to true")
    stage_dir = run_dir / "clip"
    tokenizer = build_clip_tokenizer(cfg.vocabulary, model_max_length=cfg.max_tokens)
    encoders = build_encoders(config, tokenizer)
    if cfg.init_from:  # continue from a finished CLIP stage (its final/ folder) instead of random weights
        if not (Path(cfg.init_from) / "text_encoder").is_dir():
            raise UserError(f"clip.init_from {cfg.init_from!r} is not a finished CLIP stage (a folder with "
                            "text_encoder/, image_encoder/, tokenizer/); use \"\" to start from random weights")
        _, text_encoder, image_encoder = load_frozen_clip(Path(cfg.init_from))
        for built, trained in zip(encoders, (text_encoder, image_encoder)):
            built.load_state_dict(trained.state_dict())  # strict: the architectures must agree
    model = ContrastiveModel(*encoders, cfg.init_temperature, cfg.embed_dim)
    model.image_encoder.requires_grad_(cfg.train_image_encoder)
    # A frozen text tower is "locked-image text tuning" turned around (LiT, Zhai et al. 2022): the image tower learns
    # to meet fixed text embeddings, and the token states the decoder reads stay exactly as they were.
    model.text_encoder.requires_grad_(cfg.train_text_encoder)
    model.text_heads.requires_grad_(cfg.train_text_encoder)
    max_log_scale = math.log(cfg.max_logit_scale)

    def loss_fn(step: int):
        batch = make_batch(config, step)
        labels = batch.labels()
        image_labels = torch.stack(list(labels.values()), dim=1)  # (B, A)
        input_ids, _ = tokenize(tokenizer, batch.captions)  # (B, T); no mask, as the pipeline encodes
        pixels = clip_pixels(batch.images, config.data.image_mean, config.data.image_std)  # (B, 3, 64, 64)
        with loop.autocast(cfg.train.bf16):
            with torch.set_grad_enabled(cfg.train_text_encoder):
                text = model.text_encoder(input_ids).text_embeds  # (B, D)
            with torch.set_grad_enabled(cfg.train_image_encoder):
                image = model.image_encoder(pixels).image_embeds  # (B, D)
        text, image = F.normalize(text.float(), dim=-1), F.normalize(image.float(), dim=-1)
        scale = model.logit_scale.clamp(max=max_log_scale).exp()
        logits = scale * image @ text.T  # (B_img, B_txt)
        matches = true_matches(batch.captions, image_labels)  # (B_img, B_txt)
        # Symmetric InfoNCE: images -> captions and captions -> images, each over its true matches.
        contrastive = (soft_cross_entropy(logits, matches) + soft_cross_entropy(logits.T, matches.T)) / 2
        aux = torch.stack([F.cross_entropy(model.heads[name](image), labels[name]) for name in labels]).mean()
        text_aux = text_heads_loss(model, text, batch.captions) if cfg.train_text_encoder else torch.zeros(())
        logs = {"contrastive": contrastive.item(), "aux": aux.item(), "text_aux": text_aux.item(),
                "temperature": 1 / scale.item()}
        return contrastive + cfg.aux_weight * aux + cfg.text_aux_weight * text_aux, logs

    metrics = loop.train("clip", stage_dir, model, loss_fn, cfg.train, config.run)
    final = stage_dir / "final"
    save_clip(final, config, tokenizer, model)
    # Evaluate what later stages and the pipeline will load (the text encoder rounded to its storage dtype).
    tokenizer, text_encoder, image_encoder = load_frozen_clip(final)
    metrics.update(evaluate(config, tokenizer, text_encoder, image_encoder, model.heads))
    metrics["text_token_state_cosine"] = token_state_cosines(tokenizer, text_encoder)
    return metrics


def save_clip(folder: Path, config: TrainConfig, tokenizer, model: ContrastiveModel) -> None:
    loop.save_model(model.text_encoder, folder / "text_encoder", config.run.text_encoder_dtype)
    loop.save_model(model.image_encoder, folder / "image_encoder", config.run.other_dtype)
    tokenizer.save_pretrained(folder / "tokenizer")
    build_image_processor(config).save_pretrained(folder / "image_processor")


def load_frozen_clip(folder: Path):
    """(tokenizer, text encoder, image encoder) of a finished CLIP stage: float32, eval mode, no gradients."""
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder", dtype=torch.float32)
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder", dtype=torch.float32)
    for encoder in (text_encoder, image_encoder):
        encoder.eval().requires_grad_(False)
    return tokenizer, text_encoder, image_encoder


@torch.no_grad()
def embed_images(config: TrainConfig, image_encoder, images: np.ndarray, chunk: int) -> torch.Tensor:
    """Projected image embeddings (N, D), in chunks of `chunk` images."""
    mean, std = config.data.image_mean, config.data.image_std
    return torch.cat([image_encoder(clip_pixels(images[i:i + chunk], mean, std)).image_embeds
                      for i in range(0, len(images), chunk)])


@torch.no_grad()
def evaluate(config: TrainConfig, tokenizer, text_encoder, image_encoder, heads: nn.ModuleDict) -> dict:
    """Zero-shot accuracy per attribute on held-out images (each image is given to the class whose prompt embedding
    is nearest), and the accuracy of the linear heads (how linearly readable each attribute is)."""
    cfg = config.clip
    batch = heldout_batch(config.data.heldout_seed, cfg.eval_images)
    labels = batch.labels()
    image = F.normalize(embed_images(config, image_encoder, batch.images, cfg.train.batch_size), dim=-1)  # (N, D)
    zero_shot, probe = {}, {}
    for name, classes in ATTRIBUTE_CLASSES.items():
        template = getattr(cfg.zero_shot_prompts, name)
        class_embeds = []
        for value in classes:
            # Prompt ensembling over shapes: the mean of the normalised prompt embeddings.
            prompts = [template.format(value=value, shape=s) for s in shapes.SHAPES] if "{shape}" in template \
                else [template.format(value=value)]
            input_ids, _ = tokenize(tokenizer, prompts)
            class_embeds.append(F.normalize(text_encoder(input_ids).text_embeds, dim=-1).mean(0))
        class_embeds = F.normalize(torch.stack(class_embeds), dim=-1)  # (C, D)
        zero_shot[name] = (image @ class_embeds.T).argmax(1).eq(labels[name]).float().mean().item()
        probe[name] = heads[name](image).argmax(1).eq(labels[name]).float().mean().item()
    return {"zero_shot_accuracy": {k: round(v, 4) for k, v in zero_shot.items()},
            "probe_accuracy": {k: round(v, 4) for k, v in probe.items()},
            "eval_images": cfg.eval_images}


@torch.no_grad()
def token_state_cosines(tokenizer, text_encoder) -> dict:
    """Cosine between the token states (what the decoder reads) of captions that differ in one attribute: near 1 means
    the text tower no longer tells them apart."""
    pairs = {"shape": ("a red circle", "a red square"), "colour": ("a red circle", "a blue circle"),
             "position": ("a red circle at the top left", "a red circle at the bottom right"),
             "size": ("a small red circle", "a large red circle")}
    result = {}
    for name, texts in pairs.items():
        input_ids, _ = tokenize(tokenizer, list(texts))
        states = F.normalize(text_encoder(input_ids).last_hidden_state.flatten(1), dim=-1)  # (2, T*D)
        result[name] = round((states[0] @ states[1]).item(), 4)
    return result
