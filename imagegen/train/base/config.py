"""The training recipe as frozen dataclasses, read from a TOML file (configs/train/shapes.toml).

The dataclasses have no defaults: every number lives in the TOML, and a missing or unknown key is an error, so the
file is the complete record of a run. `--smoke` and test overrides are applied to the TOML data before the
dataclasses are built, and `to_toml` writes the effective config back out (training_config.toml).
"""
from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class TrainSettings:
    """The optimisation of one stage: AdamW with warm-up + cosine decay, stopped by steps or by the clock."""

    seed: int  # data stream seed
    batch_size: int
    lr: float
    weight_decay: float
    adam_betas: tuple[float, float]
    warmup_steps: int
    max_steps: int
    minutes: float
    grad_clip: float
    bf16: bool


@dataclass(frozen=True)
class RunConfig:
    name: str
    runs_dir: str
    threads: int
    seed: int
    checkpoint_minutes: float
    log_every_steps: int
    max_total_mb: float
    text_encoder_dtype: str
    other_dtype: str
    reuse_from: str  # a finished model in the Kandinsky 2.2 layout ("" = none) ...
    reuse_stages: tuple[str, ...]  # ... whose parts stand in for these stages instead of training them


@dataclass(frozen=True)
class DataConfig:
    heldout_seed: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]


@dataclass(frozen=True)
class SmokeConfig:
    max_steps: int
    warmup_steps: int
    batch_size: int
    eval_images: int
    eval_steps: int


@dataclass(frozen=True)
class ZeroShotPrompts:
    shape: str
    colour: str
    background: str
    size: str
    position: str


@dataclass(frozen=True)
class ClipConfig:
    vocabulary: str
    max_tokens: int
    embed_dim: int
    text_layers: int
    text_heads: int
    text_mlp: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    patch_size: int
    init_temperature: float
    max_logit_scale: float
    aux_weight: float
    text_aux_weight: float
    init_from: str
    train_image_encoder: bool
    train_text_encoder: bool
    full_caption_probability: float
    hard_negative_probability: float
    eval_images: int
    zero_shot_prompts: ZeroShotPrompts
    train: TrainSettings


@dataclass(frozen=True)
class GeneratedLatents:
    """The VAE decoder's second kind of training example: latents a finished U-Net re-drew (train/base/generated.py)."""
    decoder_from: str  # a finished decoder folder (holding unet/ and scheduler/); "" = none
    share: float  # of each VAE batch (0 = encoder latents only)
    cache_images: int  # how many are made up front
    strength: float  # the image-to-image strength: how much of the noise schedule the U-Net re-draws
    steps: int  # sampler steps over the whole schedule (strength x steps of them run)
    guidance: float
    scheduler: str  # a decoder sampler name, as `imagegen --scheduler`


@dataclass(frozen=True)
class FocusExamples:
    """A share of every VAE batch drawn from one cell of the world the codec reconstructs worst (benchmarks/
    vae_ceiling.py prints the cells): the images are the generator's own, with these attributes forced."""
    share: float  # of each VAE batch (0 = none)
    shape: str  # a shape of the world, or "" = any
    size: str  # a size of the world, or "" = any


@dataclass(frozen=True)
class VaeConfig:
    channels: tuple[int, ...]
    layers_per_block: int
    latent_channels: int
    norm_groups: int
    l1_weight: float
    kl_weight: float
    latents: str
    eval_images: int
    init_from: str  # an AutoencoderKL folder to continue ("" = random weights)
    train_encoder: bool  # false: only the decoder learns, so the latents (and every model trained on them) stay valid
    heart_share: float  # of each batch: hearts, and ...
    outline_share: float  # ... outlined shapes, which the codec must reproduce for the adapters
    focus: FocusExamples
    generated: GeneratedLatents
    train: TrainSettings


@dataclass(frozen=True)
class PriorConfig:
    layers: int
    heads: int
    head_dim: int
    num_train_timesteps: int
    clip_sample_range: float
    condition_dropout: float
    stats_seed: int
    stats_images: int
    eval_images: int
    eval_steps: int
    eval_guidance: float
    init_from: str  # a finished prior to continue (a folder holding prior/); "" = random weights
    cache_images: int  # images embedded once up front, each step drawing from them; 0 = embed every batch fresh
    ema_decay: float  # the EMA's final decay (0 = no EMA: the raw weights are saved)
    ema_power: float
    train: TrainSettings


@dataclass(frozen=True)
class CaptionKeep:
    """How often a training caption states each optional attribute (shapes.caption's p_keep)."""
    colour: float
    size: float
    position: float
    background: float


@dataclass(frozen=True)
class DecoderConfig:
    channels: tuple[int, ...]
    layers_per_block: int
    cross_attention_dim: int
    attention_head_dim: int
    norm_groups: int
    down_blocks: tuple[str, ...]
    up_blocks: tuple[str, ...]
    mid_block: str
    num_train_timesteps: int
    beta_start: float
    beta_end: float
    condition_dropout: float
    min_snr_gamma: float
    ema_decay: float
    ema_power: float
    eval_images: int
    cache_batches: int
    text_conditioning: bool
    init_from: str
    caption_keep: CaptionKeep
    train: TrainSettings


@dataclass(frozen=True)
class SamplesConfig:
    prompts: tuple[str, ...]
    seed: int
    prior_steps: int
    decoder_steps: int


@dataclass(frozen=True)
class TrainConfig:
    run: RunConfig
    data: DataConfig
    smoke: SmokeConfig
    clip: ClipConfig
    vae: VaeConfig
    prior: PriorConfig
    decoder: DecoderConfig
    samples: SamplesConfig


STAGES = ("clip", "vae", "prior", "decoder")  # the training order: each stage uses the frozen ones before it


def load_config(path: str | Path, smoke: bool = False, overrides: dict | None = None) -> TrainConfig:
    """Read the TOML, apply `overrides` (nested dicts, e.g. from a test) and the smoke sizes, and check every key."""
    data = tomllib.loads(Path(path).read_text())
    data = _merge(data, overrides or {})
    if smoke:
        data = _shrink_for_smoke(data)
    return _build(TrainConfig, data, "config")


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def _shrink_for_smoke(data: dict) -> dict:
    """Every stage runs `smoke.max_steps` steps on small batches and evaluates on small sets, in its own run folder."""
    smoke = data["smoke"]
    shrunk = {"run": {"name": data["run"]["name"] + "-smoke"}}
    for stage in STAGES:
        train = data[stage]["train"]
        shrunk[stage] = {"train": {"max_steps": smoke["max_steps"], "warmup_steps": smoke["warmup_steps"],
                                   "batch_size": min(train["batch_size"], smoke["batch_size"])}}
        for key in ("eval_images", "stats_images"):
            if key in data[stage]:
                shrunk[stage][key] = smoke["eval_images"]
    shrunk["prior"]["eval_steps"] = smoke["eval_steps"]
    shrunk["decoder"]["cache_batches"] = min(data["decoder"]["cache_batches"], smoke["max_steps"])
    shrunk["prior"]["cache_images"] = min(data["prior"]["cache_images"], smoke["eval_images"])
    for stage in ("clip", "vae", "prior", "decoder"):  # a smoke run checks the code from random weights, whatever a real run
        shrunk[stage]["init_from"] = ""       # continues or reuses
    shrunk["run"].update(reuse_from="", reuse_stages=[])
    shrunk["vae"]["train_encoder"] = True  # a frozen encoder needs init_from
    shrunk["vae"]["generated"] = {"share": 0.0}  # there is no finished decoder to re-draw latents
    shrunk["samples"] = {"prior_steps": smoke["eval_steps"], "decoder_steps": smoke["eval_steps"]}
    return _merge(data, shrunk)


def _build(cls, data: dict, where: str):
    """Dataclass `cls` from a TOML table, converting lists to tuples; names the key when something is off."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown, missing = set(data) - names, names - set(data)
    if unknown or missing:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    values = {}
    for name in names:
        hint, value = hints[name], data[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{where}.{name}")
        elif typing.get_origin(hint) is tuple:
            values[name] = tuple(value)
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            values[name] = float(value)
        else:
            if not isinstance(value, hint):
                raise ValueError(f"{where}.{name} must be {hint.__name__}, got {value!r}")
            values[name] = value
    return cls(**values)


def to_toml(config) -> str:
    """The config as TOML text (scalars, lists and nested tables only), for training_config.toml."""
    lines: list[str] = []

    def table(obj, prefix: str) -> None:
        nested = []
        for f in fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                nested.append((f.name, value))
            else:
                lines.append(f"{f.name} = {_toml_value(value)}")
        for name, value in nested:
            lines.extend(["", f"[{prefix}{name}]"])
            table(value, f"{prefix}{name}.")

    for f in fields(config):
        lines.append(f"[{f.name}]")
        table(getattr(config, f.name), f"{f.name}.")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
