"""LoRA adapter training (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") for the unCLIP
pipeline: low-rank updates of the attention projections of the decoder U-Net, the diffusion prior and/or the CLIP
text encoder, and of the VAE decoder's layers, learnt from a folder of captioned images and written as one imagegen
adapter file (imagegen.lora).

Each component learns with the base model's own objective (imagegen.train.base.decoder and .prior):
- unet: DDPM noise prediction on the VAE latents of the training images, conditioned on their CLIP image embeddings
  (and on the caption's token states, for a Kandinsky 2.1-style U-Net that reads them), with Min-SNR-gamma weighting;
  CONDITION_DROPOUT of the embeddings become the all-zero image's embedding (and the caption ""), the pipeline's
  unconditional input, so classifier-free guidance keeps working;
- prior: the clean CLIP image embedding of the training image (normalised by the prior's clip_mean / clip_std) from
  its caption's text embedding, noised with the prior scheduler's betas; CONDITION_DROPOUT of the captions become "";
- text_encoder: through the prior's loss (and the U-Net's, if it reads the tokens); the captions are then encoded
  live, so only their tokens are cached;
- vae: the VAE's own reconstruction loss (MSE + VAE_L1_WEIGHT x L1, as the base VAE was trained) of the training
  images decoded from their cached latents, on the first `vae_batch_size` examples of each batch (the decoder's
  full-resolution convolutions cost more than a U-Net step). The encoder stays as it is, so the U-Net's latents keep
  their meaning: a style whose fine detail the base VAE never learnt to draw (3-px outlines) gets a decoder that draws
  it.
Images are resized / centre-cropped to the model's resolution, and latents and embeddings are computed once
(imagegen.train.lora.data).

peft puts the LoRA layers in (`inject_adapter_in_model`) and reads them out (`get_peft_model_state_dict`); accelerate
runs the loop (`prepare`, `accumulate`, `backward`, gradient all-reduce), so

    accelerate launch --num_processes 2 --cpu -m imagegen train-lora DATA --name NAME [options]

trains data-parallel on the CPU (gloo) and the main process writes the one adapter. Every random draw (example order,
noise, timesteps, condition dropout) is a function of (seed, micro-batch, process), so a run resumed from a checkpoint
(imagegen.train.lora.checkpoints) ends with the weights an uninterrupted run would have. The adapter file and the
validation grids are written by imagegen.train.lora.outputs; imagegen.train.lora.launch makes `--num_processes N --cpu`
start N processes. The options (imagegen.train.lora.options) are also the flags of `imagegen train-lora`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import UserError
from . import checkpoints, data, outputs
from .launch import make_accelerator
from .options import LoraOptions

TARGET_MODULES = {  # attention projections (name suffixes; a string is a regular expression on the full module name)
    "unet": ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj"],
    "prior": ["to_q", "to_k", "to_v", "to_out.0"],
    "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj"],
    # every convolution and attention projection of the VAE decoder (AutoencoderKL or MoVQ), none of its encoder
    "vae": r"decoder\.(.*\.)?(conv_in|conv_out|conv1|conv2|conv_shortcut|conv|conv_y|conv_b|to_q|to_k|to_v|to_out\.0)",
}
VAE_L1_WEIGHT = 0.5  # the base VAE's loss weight (configs/train/shapes.toml, vae.l1_weight); KL is the encoder's
# With --conv-rank, the U-Net's ResNet convolutions too (kohya's LoCon `conv_dim`): a style that changes fine detail
# (thin outlines) lives in the full-resolution blocks, which have no attention at all.
CONV_TARGET_MODULES = ["conv1", "conv2"]
CONDITION_DROPOUT = 0.1  # as the base model's prior and decoder training


@dataclass
class LoraResult:
    adapter: Path | None  # None when stopped early
    steps: int
    interrupted: bool
    checkpoint: Path | None
    seconds_per_step: float | None
    final_loss: float | None
    validation_images: list = field(default_factory=list)


class LoraTrainer(torch.nn.Module):
    """The trained models and their losses in one module, so accelerate prepares (and DDP wraps) one thing."""

    def __init__(self, pipe, components, unconditional: dict, snr_gamma: float, vae_batch_size: int,
                 timestep_range: tuple[int, int]):
        from diffusers import DDPMScheduler

        super().__init__()
        self.vae = pipe.vae if "vae" in components else None
        self.vae_batch_size = vae_batch_size
        self.unet = pipe.unet if "unet" in components else None
        self.prior = pipe.prior if {"prior", "text_encoder"} & set(components) else None
        self.text_encoder = pipe.text_encoder if "text_encoder" in components else None
        self.decoder_noise = DDPMScheduler.from_config(pipe.decoder_scheduler.config)
        self.prior_noise = pipe.prior_scheduler
        self.zero_image_embed = pipe.zero_image_embed().float()  # (1, D)
        self.decoder_reads_text = pipe.decoder_reads_text  # a Kandinsky 2.1-style U-Net also reads the tokens
        self.unconditional = unconditional  # the "" caption: embeddings, or tokens
        self.snr_gamma = snr_gamma
        self.timestep_range = timestep_range  # [low, high) of the U-Net's training timesteps

    def forward(self, batch: dict, generator: torch.Generator):
        losses = {}
        if self.unet is not None:
            losses["unet"] = self.decoder_loss(batch, generator)
        if self.prior is not None:
            losses["prior"] = self.prior_loss(batch, generator)
        if self.vae is not None:
            losses["vae"] = self.vae_loss(batch)
        return sum(losses.values()), {k: v.detach() for k, v in losses.items()}

    def caption_or_empty(self, batch, key, dropped):
        rows = dropped.view(-1, *[1] * (batch[key].ndim - 1))
        return torch.where(rows, self.unconditional[key], batch[key])

    def text_states(self, batch, dropped):
        """Pooled embeddings (B, D) and token states (B, T, W) of the captions, "" where dropped; encoded live
        when the text encoder is trained."""
        if self.text_encoder is None:
            return tuple(self.caption_or_empty(batch, key, dropped) for key in ("text_embeds", "token_states"))
        encoded = self.text_encoder(self.caption_or_empty(batch, "input_ids", dropped))
        return encoded.text_embeds, encoded.last_hidden_state

    def decoder_loss(self, batch, generator):
        latents, scheduler = batch["latents"], self.decoder_noise
        count, device = len(latents), latents.device  # random draws on the CPU generator, in a fixed order
        dropped = (torch.rand(count, 1, generator=generator) < CONDITION_DROPOUT).to(device)  # (B, 1)
        condition = torch.where(dropped, self.zero_image_embed, batch["image_embeds"])  # (B, D)
        states = self.text_states(batch, dropped[:, 0])[1] if self.decoder_reads_text else None  # (B, T, W)
        noise = torch.randn(latents.shape, generator=generator).to(device)  # (B, C, h, w)
        timesteps = torch.randint(*self.timestep_range, (count,), generator=generator).to(device)  # (B,)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        output = self.unet(noisy, timesteps, encoder_hidden_states=states,
                           added_cond_kwargs={"image_embeds": condition}).sample  # (B, C or 2C, h, w)
        predicted = output[:, :latents.shape[1]].float()  # a learned-variance U-Net's variance half is not trained
        velocity = scheduler.config.prediction_type == "v_prediction"
        target = scheduler.get_velocity(latents, noise, timesteps) if velocity else noise
        per_example = F.mse_loss(predicted, target, reduction="none").mean(dim=(1, 2, 3))  # (B,)
        if self.snr_gamma > 0:  # Min-SNR-gamma (Hang et al. 2023), as the base decoder was trained
            from diffusers.training_utils import compute_snr

            snr = compute_snr(scheduler, timesteps).to(per_example.device)  # (B,)
            per_example = per_example * snr.clamp(max=self.snr_gamma) / (snr + 1 if velocity else snr)
        return per_example.mean()

    def vae_loss(self, batch):
        from ...pipeline import UnCLIPPipeline

        latents = batch["latents"][:self.vae_batch_size]  # (b, C, h, w), as the U-Net makes them
        pixels = batch["pixels"][:self.vae_batch_size]  # (b, 3, H, W) in [-1, 1]
        decoded = UnCLIPPipeline.vae_decode(self.vae, latents).float()  # (b, 3, H, W), the pipeline's decode
        return F.mse_loss(decoded, pixels) + VAE_L1_WEIGHT * F.l1_loss(decoded, pixels)

    def prior_loss(self, batch, generator):
        image_embeds = batch["image_embeds"]
        count, device = len(image_embeds), image_embeds.device
        dropped = (torch.rand(count, generator=generator) < CONDITION_DROPOUT).to(device)  # (B,)
        mask = self.caption_or_empty(batch, "attention_mask", dropped)  # (B, T)
        text_embeds, token_states = self.text_states(batch, dropped)  # (B, D), (B, T, W)
        target = (image_embeds - self.prior.clip_mean) / self.prior.clip_std  # (B, D)
        noise = torch.randn(target.shape, generator=generator).to(device)  # (B, D)
        steps = self.prior_noise.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (count,), generator=generator).to(device)  # (B,)
        noisy = self.prior_noise.add_noise(target, noise, timesteps)
        predicted = self.prior(noisy, timestep=timesteps, proj_embedding=text_embeds,
                               encoder_hidden_states=token_states, attention_mask=mask).predicted_image_embedding
        goal = target if self.prior_noise.config.prediction_type == "sample" else noise
        return F.mse_loss(predicted.float(), goal)


def micro_seed(seed: int, micro: int, process: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([seed, micro, process]).generate_state(1)[0])


def train_lora(options: LoraOptions, *, progress: bool = True, on_step=None) -> LoraResult:
    """Train an adapter; `on_step(step)` is called after every optimizer step (tests stop runs with it)."""
    options.check()
    out = Path(options.out)
    target, run_dir = out / f"{options.name}.safetensors", out / f".{options.name}.training"
    if target.exists() and not options.overwrite:
        raise UserError(f"adapter {str(target)!r} exists; pass --overwrite to replace it (the old file stays until "
                        "the new one is complete)")
    examples = data.read_dataset(options.data, options.skip_bad)
    checkpoint = checkpoints.find(run_dir, options.resume, options.name) if options.resume else None
    if checkpoint is None and checkpoints.complete(run_dir) and not options.overwrite:
        raise UserError(f"{str(checkpoints.checkpoints_dir(run_dir))!r} holds checkpoints of an earlier run of "
                        f"{options.name!r}; continue it with --resume latest, or start again with --overwrite")
    run = LoraRun(options, examples, run_dir, checkpoint)
    result = run.train(progress, on_step)
    if not result.interrupted:
        result.adapter = run.finish(target, result)
    return result


class LoraRun:
    """One training run: the accelerator, the pipeline with LoRA layers, the cache, the optimizer and the loop."""

    def __init__(self, options: LoraOptions, examples, run_dir: Path, checkpoint: Path | None):
        from accelerate.utils import set_seed
        from peft import inject_adapter_in_model, set_peft_model_state_dict

        from ...loading import load_pipeline

        self.options, self.examples, self.run_dir = options, examples, run_dir
        self.accelerator = accelerator = make_accelerator(options.mixed_precision, options.grad_accum)
        device = accelerator.device
        self.pipe = pipe = load_pipeline(options.base, device="cpu" if device.type == "cpu" else str(device),
                                         dtype="float32")
        defaults = pipe.model.decoder_defaults
        self.width, self.height = (options.resolution,) * 2 if options.resolution else (defaults.width, defaults.height)
        if self.width % pipe.vae_scale_factor or self.height % pipe.vae_scale_factor:
            raise UserError(f"resolution {self.width}x{self.height} must be a multiple of the VAE's factor "
                            f"{pipe.vae_scale_factor}")
        self.alpha = float(options.alpha or options.rank)
        steps = pipe.decoder_scheduler.config.num_train_timesteps
        self.timestep_range = (options.min_timestep, steps if options.max_timestep is None else options.max_timestep)
        if self.timestep_range[1] > steps:
            raise UserError(f"--max-timestep {options.max_timestep} is beyond the decoder's {steps} training timesteps")
        self.description = {  # what a checkpoint must agree with to be continued
            "base": pipe.fingerprint(), "data": data.fingerprint(examples), "components": list(options.components),
            "rank": options.rank, "alpha": self.alpha, "conv_rank": options.conv_rank, "lr": options.lr,
            "batch_size": options.batch_size, "grad_accum": options.grad_accum, "seed": options.seed,
            "processes": accelerator.num_processes,
            "resolution": [self.width, self.height], "mixed_precision": options.mixed_precision,
            "snr_gamma": options.snr_gamma, "weight_decay": options.weight_decay,
            "lr_scheduler": options.lr_scheduler, "lr_warmup_steps": options.lr_warmup_steps,
            "ema_decay": options.ema_decay, "timesteps": list(self.timestep_range),
            # a decaying learning rate is a function of the step count, so a continued run must keep it
            **({"schedule_steps": options.steps} if options.lr_scheduler != "constant" else {}),
            **({"vae_batch_size": options.vae_batch_size} if "vae" in options.components else {})}
        state = rng = None
        if checkpoint is not None:
            state, rng = checkpoints.load(checkpoint, accelerator.process_index)
            checkpoints.check_same_run(checkpoint, state["run"], self.description)
        elif accelerator.is_main_process:
            checkpoints.clear(run_dir)  # a fresh start (--overwrite): the old run's checkpoints go
        self.checkpoint = checkpoint

        # Encode the data once, then put LoRA layers (B = 0: the model starts as the base) on each component.
        cached, unconditional = data.encode_dataset(pipe, examples, self.width, self.height,
                                                         "text_encoder" in options.components,
                                                         keep_pixels="vae" in options.components)
        set_seed(options.seed)
        self.models = {c: getattr(pipe, c) for c in options.components}
        for component, model in self.models.items():
            inject_adapter_in_model(self.lora_config(component), model, adapter_name=outputs.ADAPTER)
        trainer = LoraTrainer(pipe, options.components, unconditional, options.snr_gamma,
                              min(options.vae_batch_size, options.batch_size), self.timestep_range)
        self.parameters = [p for p in trainer.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.parameters, lr=options.lr, weight_decay=options.weight_decay)
        self.lr_schedule = self.make_lr_schedule(optimizer)  # stepped once per optimizer step, not prepared
        self.ema = None
        if options.ema_decay:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.parameters, decay=options.ema_decay)
        self.start = 0
        if state is not None:
            for component, model in self.models.items():
                set_peft_model_state_dict(model, state["lora"][component], adapter_name=outputs.ADAPTER)
            optimizer.load_state_dict(state["optimizer"])
            self.lr_schedule.load_state_dict(state["lr_schedule"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            self.start = state["step"]
            if rng is not None:
                checkpoints.set_rng_state(rng)

        # Micro-batch m of process p is batch m * processes + p of one order that depends on the seed alone.
        self.per_step = options.batch_size * options.grad_accum * accelerator.num_processes
        order = data.EpochOrder(len(examples), options.seed, max(options.steps, self.start) * self.per_step)
        loader = torch.utils.data.DataLoader(data.CachedExamples(cached), batch_size=options.batch_size,
                                             sampler=order)
        self.trainer, self.optimizer, loader = accelerator.prepare(trainer, optimizer, loader)
        self.loader = accelerator.skip_first_batches(loader, self.start * options.grad_accum) if self.start else loader
        self.validation = outputs.Validation(pipe, options, self.width, self.height, run_dir)

    def make_lr_schedule(self, optimizer):
        from diffusers.optimization import get_scheduler

        options = self.options
        name = options.lr_scheduler
        if name == "constant" and options.lr_warmup_steps:
            name = "constant_with_warmup"
        return get_scheduler(name, optimizer, num_warmup_steps=options.lr_warmup_steps,
                             num_training_steps=options.steps)

    def target_modules(self, component: str) -> list[str] | str:
        convs = CONV_TARGET_MODULES if component == "unet" and self.options.conv_rank else []
        return TARGET_MODULES[component] + convs if convs else TARGET_MODULES[component]

    def lora_config(self, component: str):
        from peft import LoraConfig

        options = self.options
        conv = dict.fromkeys(CONV_TARGET_MODULES, options.conv_rank) if component == "unet" and options.conv_rank else {}
        return LoraConfig(r=options.rank, lora_alpha=self.alpha, target_modules=self.target_modules(component),
                          rank_pattern=conv, alpha_pattern={n: r * self.alpha / options.rank for n, r in conv.items()},
                          init_lora_weights=True)

    def state(self, step: int) -> dict:
        lora = {c: {k: v.detach().cpu().clone() for k, v in outputs.lora_state(m).items()}
                for c, m in self.models.items()}
        return {"lora": lora, "optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_schedule.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None, "step": step, "run": self.description}

    def train(self, progress: bool, on_step) -> LoraResult:
        from tqdm.auto import tqdm

        options, accelerator = self.options, self.accelerator
        main = accelerator.is_main_process
        result = LoraResult(None, self.start, False, self.checkpoint, None, None)
        step, micro, saved, loss_average, seconds = self.start, self.start * options.grad_accum, self.start, None, None
        bar = tqdm(total=max(options.steps, step), initial=step, desc=f"train-lora {options.name}", dynamic_ncols=True,
                   disable=not (progress and main))
        started = time.perf_counter()
        with checkpoints.StopRequest(announce=main) as stop, bar:
            for batch in (self.loader if step < options.steps else []):
                with accelerator.accumulate(self.trainer):
                    seed = micro_seed(options.seed, micro, accelerator.process_index)
                    loss, _ = self.trainer(batch, torch.Generator().manual_seed(seed))
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(self.parameters, options.max_grad_norm)
                    self.optimizer.step()  # accelerate steps only at the end of an accumulation
                    self.optimizer.zero_grad(set_to_none=True)
                micro += 1
                if not accelerator.sync_gradients:
                    continue
                step += 1
                self.lr_schedule.step()
                if self.ema is not None:
                    self.ema.step(self.parameters)
                value = accelerator.reduce(loss.detach(), "mean").item()
                if not math.isfinite(value):
                    raise UserError(f"the loss became {value} at step {step}; lower --lr")
                took = time.perf_counter() - started
                loss_average = value if loss_average is None else 0.9 * loss_average + 0.1 * value
                seconds = took if seconds is None else 0.9 * seconds + 0.1 * took
                bar.update(1)
                bar.set_postfix(loss=f"{loss_average:.4f}", s_per_step=f"{seconds:.3f}")
                if on_step is not None:
                    on_step(step)
                if main and options.validation_prompts and self.validation_due(step):
                    result.validation_images.append(self.validation.grid(step))
                if step % options.save_every == 0 or step == options.steps:
                    result.checkpoint, saved = checkpoints.save(accelerator, self.run_dir, step, self.state(step)), step
                stopping = stop.requested
                if accelerator.num_processes > 1:  # every process stops after the same step
                    stopping = accelerator.reduce(torch.tensor(float(stopping)), "sum").item() > 0
                if stopping and saved != step:
                    result.checkpoint = checkpoints.save(accelerator, self.run_dir, step, self.state(step))
                if stopping or step >= options.steps:
                    result.interrupted = stopping and step < options.steps
                    break
                started = time.perf_counter()
        result.steps, result.seconds_per_step, result.final_loss = step, seconds, loss_average
        return result

    def validation_due(self, step: int) -> bool:
        every = self.options.validation_every
        return bool(every) and step % every == 0

    def finish(self, target: Path, result: LoraResult) -> Path | None:
        """The main process writes the adapter (and the last validation grid); the others wait for it."""
        options, path = self.options, None
        if self.ema is not None:  # the adapter (and its last validation grid) holds the averaged weights
            self.ema.copy_to(self.parameters)
        if self.accelerator.is_main_process:
            if options.validation_prompts and not self.validation_due(result.steps):
                result.validation_images.append(self.validation.grid(result.steps))
            training = {**self.description, "steps": result.steps, "images": len(self.examples),
                        "dataset": Path(options.data).resolve().name, "effective_batch_size": self.per_step,
                        "condition_dropout": CONDITION_DROPOUT,
                        "target_modules": {c: self.target_modules(c) for c in options.components},
                        "seconds_per_step": result.seconds_per_step and round(result.seconds_per_step, 4),
                        "final_loss": result.final_loss}
            adapter = outputs.build_adapter(self.models, self.alpha / options.rank)
            path = outputs.write(self.pipe, adapter, target, options, training)
        self.accelerator.wait_for_everyone()
        return path

