"""Train the embedded default "shapes" model from scratch and write it in the Kandinsky 2.2 layout.

    imagegen train-base --config configs/train/shapes.toml --out imagegen/weights/shapes [--resume]
    imagegen train-base --config configs/train/shapes.toml --smoke     # ~5 steps per stage, end to end

The four stages run in order, each on the frozen results of the ones before: CLIP -> VAE -> prior -> decoder. All
work goes to `<runs_dir>/<name>/`: per stage a `checkpoint.safetensors` (resumable) and a `final/` folder whose
`metrics.json` marks the stage finished (it is then skipped), plus `train.log`, `config.toml` and `metrics.json`.
At the end the finished stages are assembled with diffusers' own Kandinsky 2.2 pipelines' `save_pretrained`
(safetensors only) into `out/prior` and `out/decoder`, next to `out/training_config.toml` and `out/metrics.json`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from ...errors import UserError
from .clip import build_image_processor, train_clip
from .config import STAGES, TrainConfig, load_config, to_toml
from .data import focus_attributes
from .decoder import train_decoder
from .options import TrainBaseOptions
from .prior import train_prior
from .vae import train_vae

log = logging.getLogger("imagegen.train")

TRAINERS = {"clip": train_clip, "vae": train_vae, "prior": train_prior, "decoder": train_decoder}
FINISHED_MARKER = "metrics.json"  # written last into a stage's final/ folder
# Where each stage's final/ parts sit in a finished model (what `assemble` writes), for `run.reuse_stages`.
REUSABLE_PARTS = {
    "clip": {"tokenizer": "prior/tokenizer", "text_encoder": "prior/text_encoder", "image_encoder": "prior/image_encoder"},
    "vae": {"vae": "decoder/movq"},
    "prior": {"prior": "prior/prior", "scheduler": "prior/scheduler"},
    "decoder": {"unet": "decoder/unet", "scheduler": "decoder/scheduler"},
}


def train_base(config_path: str | Path, out_dir: str | Path, resume: bool = False, smoke: bool = False,
               overrides: dict | None = None) -> dict:
    """Run every unfinished stage, then write the model to `out_dir`. Returns {"ran", "skipped", "reused", "metrics"}."""
    config = load_config(config_path, smoke=smoke, overrides=overrides)
    run_dir = Path(config.run.runs_dir) / config.run.name
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise UserError(f"run folder {str(run_dir)!r} already holds a run: pass --resume to continue it, "
                        "or remove it / change run.name to start over")
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.run.threads)
    file_log = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_log)
    log.setLevel(logging.INFO)
    try:
        return _train_all(config, Path(config_path), run_dir, Path(out_dir))
    finally:
        log.removeHandler(file_log)
        file_log.close()


def _train_all(config: TrainConfig, config_path: Path, run_dir: Path, out_dir: Path) -> dict:
    started = time.perf_counter()
    unknown = [stage for stage in config.run.reuse_stages if stage not in REUSABLE_PARTS]
    if unknown or (config.run.reuse_stages and not config.run.reuse_from):
        raise UserError(f"run.reuse_stages {list(config.run.reuse_stages)!r} needs stages from {list(REUSABLE_PARTS)} "
                        f"and a run.reuse_from model folder (got {config.run.reuse_from!r})")
    focus_attributes(config.vae.focus)  # a misspelt focus cell fails before any stage trains
    _record_config(config, config_path, run_dir)
    metrics, ran, skipped, reused = {}, [], [], []
    for index, stage in enumerate(STAGES):
        marker = run_dir / stage / "final" / FINISHED_MARKER
        if marker.exists():
            log.info("%s: finished earlier, skipped (%s)", stage, marker)
            metrics[stage] = json.loads(marker.read_text())
            skipped.append(stage)
            continue
        if stage in config.run.reuse_stages:
            metrics[stage] = reuse_stage(stage, Path(config.run.reuse_from), run_dir / stage / "final")
            _write_json(marker, metrics[stage])
            log.info("%s: reused from %s", stage, config.run.reuse_from)
            reused.append(stage)
            continue
        log.info("%s: training", stage)
        # One seed per stage, so re-running one stage alone draws what it drew in the full run.
        torch.manual_seed(config.run.seed + index)
        stage_started = time.perf_counter()
        metrics[stage] = TRAINERS[stage](config, run_dir)
        metrics[stage]["wall_minutes_this_session"] = round((time.perf_counter() - stage_started) / 60, 2)
        _write_json(marker, metrics[stage])
        log.info("%s: done %s", stage, json.dumps(metrics[stage]))
        ran.append(stage)

    metrics["model_mb"] = assemble(config, run_dir, out_dir)
    metrics["wall_minutes_this_session"] = round((time.perf_counter() - started) / 60, 2)
    _write_json(run_dir / "metrics.json", metrics)
    _write_json(out_dir / "metrics.json", metrics)
    write_samples(config, out_dir, run_dir / "samples.png")
    log.info("model written to %s (%.1f MB); samples in %s", out_dir, metrics["model_mb"], run_dir / "samples.png")
    return {"ran": ran, "skipped": skipped, "reused": reused, "metrics": metrics}


def reuse_stage(stage: str, model_dir: Path, final_dir: Path) -> dict:
    """Copy a finished model's parts of `stage` into the stage's final/ folder; returns that model's metrics of the
    stage, with where they came from."""
    for part, source in REUSABLE_PARTS[stage].items():
        if not (model_dir / source).is_dir():
            raise UserError(f"run.reuse_from {str(model_dir)!r} has no {source}/ to reuse as the {stage} stage")
        shutil.rmtree(final_dir / part, ignore_errors=True)
        shutil.copytree(model_dir / source, final_dir / part)
    recorded = model_dir / "metrics.json"
    earlier = json.loads(recorded.read_text()).get(stage, {}) if recorded.is_file() else {}
    return {**earlier, "reused_from": str(model_dir)}


def _record_config(config: TrainConfig, config_path: Path, run_dir: Path) -> None:
    """Keep the effective config with the run; warn when a resumed run was started with a different one."""
    text = f"# effective config of this run, read from {config_path}\n" + to_toml(config)
    recorded = run_dir / "config.toml"
    if recorded.exists() and recorded.read_text().split("\n", 1)[1] != text.split("\n", 1)[1]:
        log.warning("the config differs from the one this run started with; finished stages are kept as they are")
    recorded.write_text(text)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def assemble(config: TrainConfig, run_dir: Path, out_dir: Path) -> float:
    """Write out/prior and out/decoder with diffusers' Kandinsky 2.2 pipelines, in the storage dtypes of the config;
    returns the size in MB."""
    from diffusers import (AutoencoderKL, DDPMScheduler, KandinskyV22Pipeline, KandinskyV22PriorPipeline,
                           PriorTransformer, UNet2DConditionModel, UnCLIPScheduler)
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

    text_dtype, other_dtype = getattr(torch, config.run.text_encoder_dtype), getattr(torch, config.run.other_dtype)
    clip_dir, vae_dir = run_dir / "clip" / "final", run_dir / "vae" / "final"
    prior_dir, decoder_dir = run_dir / "prior" / "final", run_dir / "decoder" / "final"
    prior_pipe = KandinskyV22PriorPipeline(
        prior=PriorTransformer.from_pretrained(prior_dir / "prior", torch_dtype=other_dtype),
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(clip_dir / "image_encoder", dtype=other_dtype),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(clip_dir / "text_encoder", dtype=text_dtype),
        tokenizer=CLIPTokenizer.from_pretrained(clip_dir / "tokenizer"),
        scheduler=UnCLIPScheduler.from_pretrained(prior_dir / "scheduler"),
        image_processor=build_image_processor(config))
    decoder_pipe = KandinskyV22Pipeline(
        unet=UNet2DConditionModel.from_pretrained(decoder_dir / "unet", torch_dtype=other_dtype),
        scheduler=DDPMScheduler.from_pretrained(decoder_dir / "scheduler"),
        movq=AutoencoderKL.from_pretrained(vae_dir / "vae", torch_dtype=other_dtype))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, pipe in (("prior", prior_pipe), ("decoder", decoder_pipe)):
        shutil.rmtree(out_dir / name, ignore_errors=True)  # no stale files from an earlier model
        pipe.save_pretrained(out_dir / name, safe_serialization=True)
    (out_dir / "training_config.toml").write_text(to_toml(config))

    size_mb = sum(f.stat().st_size for name in ("prior", "decoder") for f in (out_dir / name).rglob("*")
                  if f.is_file()) / 2**20
    if size_mb > config.run.max_total_mb:
        log.warning("the model is %.1f MB, over the %.1f MB limit (run.max_total_mb)", size_mb, config.run.max_total_mb)
    return round(size_mb, 2)


def write_samples(config: TrainConfig, model_dir: Path, path: Path) -> None:
    """One image per sample prompt from the written model, side by side: a first look at the result."""
    from PIL import Image

    import imagegen
    from imagegen.settings import DecoderSettings, PriorSettings

    pipe = imagegen.load_pipeline(str(model_dir))
    cfg = config.samples
    images = [pipe(prompt, num_images=1, seed=cfg.seed, prior=PriorSettings(steps=cfg.prior_steps),
                   decoder=DecoderSettings(steps=cfg.decoder_steps, width=64, height=64), progress=False).images[0]
              for prompt in cfg.prompts]
    grid = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)))
    for index, image in enumerate(images):
        grid.paste(image, (index * image.width, 0))
    grid.save(path)


def run(options: TrainBaseOptions) -> dict:
    """`imagegen train-base`: `train_base` as the options ask, logging to stderr above the progress bars."""
    from ...locations import existing_or_shipped

    options = dataclasses.replace(options, config=str(existing_or_shipped(options.config)))
    if not Path(options.config).is_file():
        raise UserError(f"training recipe {options.config!r} does not exist (see configs/train/)")
    out = options.out
    if out is None and not options.smoke:
        raise UserError("--out is required (e.g. imagegen/weights/shapes)")
    if out is None:  # a smoke run never overwrites a real model unless asked to
        smoke_config = load_config(options.config, smoke=True).run
        out = str(Path(smoke_config.runs_dir) / smoke_config.name / "model")

    from tqdm.contrib.logging import logging_redirect_tqdm

    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(console)
    log.propagate = False  # not again through the command line's own handler
    try:
        with logging_redirect_tqdm(loggers=[log]):
            return train_base(options.config, out, resume=options.resume, smoke=options.smoke)
    finally:
        log.removeHandler(console)
        log.propagate = True
