"""unCLIP text-to-image in latent space: DALL-E 2's two-stage design (Ramesh et al. 2022, "Hierarchical
Text-Conditional Image Generation with CLIP Latents") with a latent U-Net decoder, as in Kandinsky 2.2.

    prompt -> tokens -> CLIP text embedding -> diffusion prior -> CLIP image embedding
           -> U-Net denoising loop on VAE latents -> VAE decode -> PIL images

`UnCLIPPipeline.__call__` is that recipe as numbered steps; the two sampling loops are `sample_prior()` and
`denoise()`, each reporting every step to one hook (imagegen.steps). A call is a batch of rows (imagegen.conditioning),
one per image, each with its own prompt and seeds: image k of a prompt draws its noise from generators seeded
`seed + k` (decoder) and `prior_seed + k` (prior), and every image's texts are encoded on their own, so any image can
be made again from the GenerationRecord (imagegen.record) written with it — bit for bit in a batch of the same
shape at the same torch thread count (CPU kernels round by both).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import VQModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from . import schedulers
from .errors import UserError
from .guidance import Guidance
from .record import GenerationRecord
from .conditioning import batch_rows
from .result import GenerationResult, MixItem
from .settings import DecoderSettings, Limits, PriorSettings, RuntimeSettings
from .steps import RunControl, StepInfo, step_reporter
from .tokens import tokenize

log = logging.getLogger("imagegen")
WARNING_QUOTE_CHARS = 60  # a warning quotes at most this much of what it is about
NON_FINITE = ("the generation gave NaN/inf {what}, so no image was written; extreme guidance or LoRA weights, or an "
              "adapter that does not suit this model, can cause it")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    ref: str  # what finds the model again: a preset name, or the absolute path of a preset file or folder
    prior_defaults: PriorSettings
    decoder_defaults: DecoderSettings
    folders: tuple = ()  # the prior and decoder folders (their weights give the model's fingerprint)


class UnCLIPPipeline:
    """CLIP text encoder -> diffusion prior -> latent U-Net decoder -> VAE, with unCLIP mixing and variations."""

    def __init__(self, components: dict, model: ModelInfo, runtime: RuntimeSettings, attention_backend: str = "sdpa"):
        self.tokenizer = components["tokenizer"]
        self.text_encoder = components["text_encoder"]
        self.image_encoder = components["image_encoder"]
        self.image_processor = components["image_processor"]
        self.prior = components["prior"]
        self.prior_scheduler = components["prior_scheduler"]
        self.unet = components["unet"]
        self.decoder_scheduler = components["decoder_scheduler"]
        self.vae = components["vae"]
        self.model = model
        self.runtime = runtime
        self.attention_backend = attention_backend
        self.device = torch.device(runtime.device)
        self.dtype = self.unet.dtype
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._zero_image_embed = None
        self._schedulers = {}  # (stage, name) -> scheduler, reused: from_config costs ~5 ms
        self._loras = None
        self._fingerprint = None
        self.limits = Limits.for_model(model.decoder_defaults)
        self._text_cache = None  # within a call: text group -> encoding (adapters may change between calls)

    # ---------------------------------------------------------------- the recipe
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        negative_prompt: str | list[str] = "",
        num_images: int = 1,
        seed: int | list[int] | None = None,
        prior_seed: int | list[int] | None = None,
        mix: list[MixItem] | None = None,
        loras: list | None = None,
        prior: PriorSettings | None = None,
        decoder: DecoderSettings | None = None,
        progress: bool = True,
        callback_on_step_end=None,
        interrupt=None,
    ) -> GenerationResult:
        """`num_images` images of each prompt (a list makes one batch of different prompts, each with its own seed,
        negative prompt and prior seed when those are lists too), or of one unCLIP mix. `loras`: adapter specs
        ("heart", "heart:0.8", "heart:unet=1:prior=0.5") or LoraRequest objects; None (and no <lora:...> tags) keeps
        the active ones. `callback_on_step_end(StepInfo)` runs after every prior and decoder step; `interrupt` (a
        threading.Event) is checked between steps and stops the run with `Interrupted`."""
        prior = prior or self.model.prior_defaults
        decoder = decoder or self.model.decoder_defaults
        control = RunControl(progress, callback_on_step_end, interrupt)

        # 1. Check every input before any work: one row per image, each with its own conditioning, negative prompt
        #    and seeds; then switch to the LoRA adapters asked for (by `loras` and by <lora:NAME:W> tags).
        prior.validate()
        decoder.validate(self.vae_scale_factor)
        rows, requests = batch_rows(prompt, mix, negative_prompt, num_images, seed, prior_seed, loras)
        self.limits.check(decoder, len(rows))
        if requests is not None:
            self.loras.activate(requests)  # outside inference mode: peft sets flags
        conditionings = [row.items for row in rows]
        negatives = [row.negative for row in rows]

        with torch.inference_mode(), self._text_encodings_reused():
            # 2-4. Each text: tokens -> CLIP text embedding -> prior -> image embedding; each image: CLIP image
            #      embedding. The weighted sum is the image embedding the decoder follows (unCLIP mixing).
            image_embeds, negative_embeds = self.image_embeddings(conditionings, negatives,
                                                                  [row.prior_seed for row in rows], prior, control)

            # 5. U-Net denoising loop on VAE latents, guided away from the negative image embedding (and, for a
            #    decoder that also reads the prompt's tokens, from the negative prompt's).
            tokens = self.decoder_text_states(conditionings, negatives)
            latents = self.denoise(image_embeds, negative_embeds, [row.seed for row in rows], decoder, control,
                                   tokens)  # (B, C, h, w)

            # 6. VAE decode -> pixels in [0, 1] -> PIL images, each with its record.
            pixels = self.decode(latents)  # (B, H, W, 3)
        images = [Image.fromarray((p * 255).round().astype("uint8")) for p in pixels]
        return GenerationResult(images=images, records=self.records(rows, prior, decoder), pixels=pixels)

    @contextmanager
    def _text_encodings_reused(self):
        self._text_cache = {}
        try:
            yield
        finally:
            self._text_cache = None

    def records(self, rows, prior: PriorSettings, decoder: DecoderSettings) -> list[GenerationRecord]:
        shared = dict(prior=prior, decoder=decoder, model=self.model.name, model_hash=self.fingerprint(),
                      model_ref=self.model.ref, loras=tuple(self.active_loras()), batch_size=len(rows),
                      device=self.runtime.device, dtype=str(self.dtype).removeprefix("torch."),
                      attention=self.attention_backend)
        return [GenerationRecord(prompt=row.prompt, negative_prompt=row.negative, seed=row.seed,
                                 prior_seed=row.prior_seed, mix=row.mix, batch_index=i, **shared)
                for i, row in enumerate(rows)]

    # ---------------------------------------------------------------- LoRA adapters
    @property
    def loras(self):
        if self._loras is None:
            from .lora.manager import LoraManager

            self._loras = LoraManager(self)
        return self._loras

    def active_loras(self) -> list:
        """A LoraUse (name, weights, A1111 hash, file, window) per active adapter; none loaded: no manager is made."""
        return self._loras.records() if self._loras is not None else []

    def load_lora(self, name_or_path: str, weight: float | dict = 1.0) -> str:
        """Load an adapter and add it to the active set with `weight` (a number, or {component: number})."""
        name = self.loras.load(name_or_path)
        self.set_lora_weights({**self.loras.active, name: weight})
        return name

    def set_lora_weights(self, weights: dict) -> None:
        self.loras.set_weights(weights)

    def fuse_loras(self) -> None:
        self.loras.fuse()

    def unfuse_loras(self) -> None:
        self.loras.unfuse()

    def unload_lora(self, name: str | None = None) -> None:
        """Unload one adapter, or all of them; with none left the base model is restored exactly."""
        self.loras.unload(name) if name else self.loras.unload_all()

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from .loading import fingerprint

            self._fingerprint = fingerprint(self.model.folders)
        return self._fingerprint

    # ---------------------------------------------------------------- stage 1: text -> image embedding
    def image_embeddings(self, conditionings, negatives, prior_seeds, settings, control=None):
        """Row i's image embedding: the weighted sum of its items' embeddings; and its negative image embedding.
        Both (B, D). Every row holds the same number of items (one prompt, or the same mix)."""
        batch = len(conditionings)
        negative_rows = [i for i, text in enumerate(negatives) if text]
        negative = self.zero_image_embed().repeat(batch, 1)  # (B, D): Kandinsky 2.2's "no negative"
        total, negatives_sampled = 0, not negative_rows
        for slot in range(len(conditionings[0])):
            items = [row[slot] for row in conditionings]
            if items[0].text is not None:
                # As diffusers' Kandinsky 2.2 prior: the negative prompts are sampled in the same batch, and their
                # samples become the decoder's negative image embeddings.
                extra = [] if negatives_sampled else negative_rows
                sampled = self.sample_prior([item.text for item in items], negatives, prior_seeds, settings, control,
                                            sampled_negatives=extra)  # (B + extra, D)
                embeds = sampled[:batch]
                if extra:
                    negative[extra] = sampled[batch:]
                    negatives_sampled = True
            else:
                embeds = torch.cat([self.embed_image(item.image) for item in items])  # (B, D)
            weights = torch.tensor([[item.weight] for item in items], device=self.device, dtype=embeds.dtype)
            total = total + embeds * weights  # (B, D) * (B, 1)
        if not negatives_sampled:  # images only: sample the negative prompts on their own
            texts = [negatives[i] for i in negative_rows]
            negative[negative_rows] = self.sample_prior(texts, texts, [prior_seeds[i] for i in negative_rows],
                                                        settings, control)  # (len(negative_rows), D)
        return total, negative

    def encode_text(self, texts: list[str]):
        """Tokens -> (pooled projected embedding (N, D), token states (N, T, W), attention mask (N, T))."""
        tokens = tokenize(self.tokenizer, texts)
        self._warn_truncated(texts)
        out = self.text_encoder(tokens.input_ids.to(self.device))
        return out.text_embeds, out.last_hidden_state, tokens.attention_mask.bool().to(self.device)

    def encode_group(self, texts: tuple):
        """encode_text of exactly this group of texts, reused within a call. Each image's texts are encoded in a
        group of their own (CPU kernels round by batch shape), so an image never depends on the other prompts of its
        batch and can be made again alone; the groups are the ones diffusers' Kandinsky 2.2 prior encodes."""
        if self._text_cache is None:
            return self.encode_text(list(texts))
        if texts not in self._text_cache:
            self._text_cache[texts] = self.encode_text(list(texts))
        return self._text_cache[texts]

    def _warn_truncated(self, texts: list[str]) -> None:
        limit = self.tokenizer.model_max_length
        for text in dict.fromkeys(texts):
            ids = self.tokenizer(text, verbose=False).input_ids
            if len(ids) > limit:
                dropped = self.tokenizer.decode(ids[limit - 1:-1])
                shown = dropped if len(dropped) <= WARNING_QUOTE_CHARS else dropped[:WARNING_QUOTE_CHARS] + "..."
                log.warning("prompt is longer than %d tokens; dropped %d characters: %r", limit, len(dropped), shown)

    def sample_prior(self, texts, unconditional, seeds, settings: PriorSettings, control=None,
                     sampled_negatives=()) -> torch.Tensor:
        """Diffusion prior: sample CLIP image embeddings for texts, one generator per row; row i is guided away from
        unconditional[i] (its negative prompt, or ""). The negative prompts of the rows in `sampled_negatives` are
        sampled too, as extra rows after the N (diffusers' Kandinsky 2.2 prior does so in the same batch). -> (N', D)"""
        control = control or RunControl()
        scheduler = self._scheduler("prior", settings.scheduler)
        scheduler.set_timesteps(settings.steps, device=self.device)
        guidance = Guidance.of(settings, len(scheduler.timesteps))
        guided = guidance.enabled
        with_negative = set(sampled_negatives)
        rows, unconditional_rows = [], []
        for i, (text, negative) in enumerate(zip(texts, unconditional)):
            group = (text, negative) if i in with_negative else (text,)
            rows.append((group, 0))
            unconditional_rows.append(((negative,) * len(group), 0))
        for i in sampled_negatives:
            rows.append(((texts[i], unconditional[i]), 1))
            unconditional_rows.append(((unconditional[i],) * 2, 1))
        seeds = list(seeds) + [seeds[i] for i in sampled_negatives]
        embeds, states, mask = self._gather(rows)  # (N', D), (N', T, W), (N', T)
        if guided:  # unconditional rows go first, as in diffusers
            u_embeds, u_states, u_mask = self._gather(unconditional_rows)
            embeds, states, mask = torch.cat([u_embeds, embeds]), torch.cat([u_states, states]), torch.cat([u_mask, mask])

        step = schedulers.stepper(scheduler)
        timesteps = scheduler.timesteps
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        shape = (len(seeds), self.prior.config.embedding_dim)
        latents = randn_tensor(shape, generator=generators, device=self.device, dtype=embeds.dtype)  # (N, D)
        latents = latents * (scheduler.init_noise_sigma * settings.noise)
        report = step_reporter("prior", len(timesteps), control)
        for i, t in enumerate(timesteps):
            both = guidance.at(i)  # else the conditional rows alone (the last N)
            rows = slice(None) if both else slice(-len(seeds), None)
            model_input = torch.cat([latents] * 2) if both else latents  # (2N, D)
            model_input = scheduler.scale_model_input(model_input, t)
            predicted = self.prior(model_input, timestep=t, proj_embedding=embeds[rows],
                                   encoder_hidden_states=states[rows], attention_mask=mask[rows]
                                   ).predicted_image_embedding  # (2N, D)
            if both:
                predicted = guidance.combine(*predicted.chunk(2))
            next_t = timesteps[i + 1] if i + 1 < len(timesteps) else None
            latents = step(predicted, t, latents, next_t, generators)
            report(StepInfo("prior", i, len(timesteps), t, latents))
        return self.prior.post_process_latents(latents)  # (N, D): un-normalised with the prior's CLIP stats

    def _gather(self, rows):
        """Stack row `index` of the encoding of each (group, index) -> (N, D), (N, T, W), (N, T)."""
        parts = [self.encode_group(group) for group, _ in rows]
        return tuple(torch.cat([part[k][index:index + 1] for part, (_, index) in zip(parts, rows)]) for k in range(3))

    def embed_image(self, image: Image.Image) -> torch.Tensor:
        pixels = self.image_processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
        pixels = pixels.to(device=self.device, dtype=self.image_encoder.dtype)  # (1, 3, S, S)
        return self.image_encoder(pixels).image_embeds  # (1, D)

    def zero_image_embed(self) -> torch.Tensor:
        """The image embedding of an all-zero image: Kandinsky 2.2's unconditional decoder input."""
        if self._zero_image_embed is None:
            size = self.image_encoder.config.image_size
            zeros = torch.zeros(1, 3, size, size, device=self.device, dtype=self.image_encoder.dtype)
            self._zero_image_embed = self.image_encoder(zeros).image_embeds  # (1, D)
        return self._zero_image_embed

    def _scheduler(self, stage: str, name: str):
        if (stage, name) not in self._schedulers:
            make = schedulers.make_prior_scheduler if stage == "prior" else schedulers.make_decoder_scheduler
            shipped = self.prior_scheduler if stage == "prior" else self.decoder_scheduler
            self._schedulers[stage, name] = make(shipped, name)
        return self._schedulers[stage, name]

    # ---------------------------------------------------------------- stage 2: image embedding -> pixels
    @property
    def decoder_reads_text(self) -> bool:
        """Kandinsky 2.2's U-Net sees the image embedding only; a 2.1-style one (`text_image_proj`) also the tokens."""
        return self.unet.config.encoder_hid_dim_type == "text_image_proj"

    def decoder_text_states(self, conditionings, negatives):
        """(negative, positive) token states (B, T, W) for a text-reading decoder, else None. A mix gives the tokens
        of its first text; image variations those of the empty prompt."""
        if not self.decoder_reads_text:
            return None
        texts = [next((item.text for item in row if item.text is not None), "") for row in conditionings]
        groups = [(negative, text) for negative, text in zip(negatives, texts)]
        return self._gather([(g, 0) for g in groups])[1], self._gather([(g, 1) for g in groups])[1]  # (B, T, W) each

    def denoise(self, image_embeds, negative_embeds, seeds, settings: DecoderSettings, control=None,
                text_states=None) -> torch.Tensor:
        """Latent diffusion decoder: the U-Net loop conditioned on image embeddings, one generator per image."""
        control = control or RunControl()
        scheduler = self._scheduler("decoder", settings.scheduler)
        scheduler.set_timesteps(settings.steps, device=self.device)
        guidance = Guidance.of(settings, len(scheduler.timesteps))
        guided = guidance.enabled
        condition = torch.cat([negative_embeds, image_embeds]) if guided else image_embeds  # (2B, D)
        condition = condition.to(self.unet.dtype)
        tokens = None
        if text_states is not None:
            tokens = torch.cat(text_states) if guided else text_states[1]  # (2B, T, W)

        step = schedulers.stepper(scheduler)
        learned_variance = schedulers.uses_learned_variance(scheduler)
        channels = self.unet.config.in_channels
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        shape = (len(seeds), channels, settings.height // self.vae_scale_factor, settings.width // self.vae_scale_factor)
        latents = randn_tensor(shape, generator=generators, device=self.device, dtype=condition.dtype)  # (B, C, h, w)
        latents = latents * scheduler.init_noise_sigma
        timesteps = scheduler.timesteps
        windows = self._loras.step_windows() if self._loras is not None else None  # adapters on part of the loop
        report = step_reporter("decoder", len(timesteps), control, *([windows] if windows else []))
        try:
            for i, t in enumerate(timesteps):
                both = guidance.at(i)  # else the conditional rows alone (the last B)
                rows = slice(None) if both else slice(-len(seeds), None)
                model_input = torch.cat([latents] * 2) if both else latents  # (2B, C, h, w)
                model_input = scheduler.scale_model_input(model_input, t)
                output = self.unet(model_input, t, encoder_hidden_states=None if tokens is None else tokens[rows],
                                   added_cond_kwargs={"image_embeds": condition[rows]}).sample  # (2B, C or 2C, h, w)
                noise, variance = output[:, :channels], output[:, channels:]
                if both:
                    noise = guidance.combine(*noise.chunk(2))  # (B, C, h, w)
                    variance = variance.chunk(2)[1]
                model_output = torch.cat([noise, variance], dim=1) if learned_variance and variance.shape[1] else noise
                next_t = timesteps[i + 1] if i + 1 < len(timesteps) else None
                latents = step(model_output, t, latents, next_t, generators)
                report(StepInfo("decoder", i, len(timesteps), t, latents))
        finally:
            if windows:
                windows.close()
        return latents

    def decode(self, latents: torch.Tensor):
        """VAE latents -> float pixels (B, H, W, 3) in [0, 1] as a numpy array."""
        if not torch.isfinite(latents).all():
            raise UserError(NON_FINITE.format(what="latents"))
        pixels = self.vae_decode(self.vae, latents)  # (B, 3, H, W) in [-1, 1]
        if not torch.isfinite(pixels).all() and self.vae.dtype != torch.float32:
            log.warning("the VAE decode in %s gave NaN/inf values; decoded again in float32", self.vae.dtype)
            self.vae.to(torch.float32)
            pixels = self.vae_decode(self.vae, latents.float())
            self.vae.to(self.dtype)
        if not torch.isfinite(pixels).all():
            raise UserError(NON_FINITE.format(what="pixels"))
        return (pixels * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()  # (B, H, W, 3)

    @staticmethod
    def vae_decode(vae, latents):
        if isinstance(vae, VQModel):
            # Kandinsky 2.2's U-Net works on MoVQ's unquantised, unscaled latents.
            return vae.decode(latents.to(vae.dtype), force_not_quantize=True).sample
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift).sample
