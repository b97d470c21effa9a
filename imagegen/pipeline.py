"""unCLIP text-to-image in latent space: DALL-E 2's two-stage design (Ramesh et al. 2022, "Hierarchical
Text-Conditional Image Generation with CLIP Latents") with a latent U-Net decoder, as in Kandinsky 2.2.

    prompt -> tokens -> CLIP text embedding -> diffusion prior -> CLIP image embedding
           -> U-Net denoising loop on VAE latents -> VAE decode -> PIL images

`UnCLIPPipeline.__call__` is that recipe as numbered steps; the two sampling loops are `sample_prior()` and
`denoise()`. Image i of a batch draws its noise from its own generators seeded `seed + i` (decoder) and
`prior_seed + i` (prior), so any image can be made again from the seeds recorded with it.
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, replace

import torch
from diffusers import VQModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tqdm.auto import tqdm

from . import schedulers
from .errors import UserError
from .result import GenerationResult, MixItem
from .settings import MAX_SEED, DecoderSettings, PriorSettings, RuntimeSettings, check_seed

log = logging.getLogger("imagegen")


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

    # ---------------------------------------------------------------- the recipe
    def __call__(
        self,
        prompt: str | None = None,
        *,
        negative_prompt: str = "",
        num_images: int = 1,
        seed: int | None = None,
        prior_seed: int | None = None,
        mix: list[MixItem] | None = None,
        loras: list | None = None,
        prior: PriorSettings | None = None,
        decoder: DecoderSettings | None = None,
        progress: bool = True,
    ) -> GenerationResult:
        prior = prior or self.model.prior_defaults
        decoder = decoder or self.model.decoder_defaults

        # 1. Check every input before any work, fix the seeds, and switch to the LoRA adapters asked for (by
        #    `loras` and by `<lora:NAME:WEIGHT>` tags in the prompts; None and no tags keeps the current ones).
        items = self._conditioning(prompt, mix)
        items, tag_requests = self._split_lora_tags(items)
        prior.validate()
        decoder.validate(self.vae_scale_factor)
        if not isinstance(num_images, int) or num_images < 1:
            raise UserError(f"number of images must be a whole number >= 1, got {num_images!r}")
        check_seed("seed", seed)
        check_seed("prior seed", prior_seed)
        seed = secrets.randbelow(MAX_SEED + 1) if seed is None else seed
        prior_seed = seed if prior_seed is None else prior_seed
        seeds = [(seed + i) % (MAX_SEED + 1) for i in range(num_images)]
        prior_seeds = [(prior_seed + i) % (MAX_SEED + 1) for i in range(num_images)]
        if loras is not None or tag_requests:
            from .lora.requests import merge

            self.loras.activate(merge(list(loras or []) + tag_requests))  # outside inference mode: peft sets flags

        with torch.inference_mode():
            # 2-4. Each text: tokens -> CLIP text embedding -> prior -> image embedding; each image: CLIP image
            #      embedding. The weighted sum is the image embedding the decoder follows (unCLIP mixing).
            texts_cleaned = [replace(item, text=cleaned) for item, cleaned in items]
            image_embeds, negative_embeds = self.image_embeddings(texts_cleaned, negative_prompt, prior_seeds, prior,
                                                                  progress)

            # 5. U-Net denoising loop on VAE latents, guided away from the negative image embedding (and, for a
            #    decoder that also reads the prompt's tokens, from the negative prompt's).
            tokens = self.decoder_text_states(texts_cleaned, negative_prompt, num_images)
            latents = self.denoise(image_embeds, negative_embeds, seeds, decoder, progress, tokens)  # (B, C, h, w)

            # 6. VAE decode -> pixels in [0, 1] -> PIL images.
            pixels = self.decode(latents)  # (B, H, W, 3)
        images = [Image.fromarray((p * 255).round().astype("uint8")) for p in pixels]
        result = GenerationResult.build(images, self, [item for item, _ in items], negative_prompt, seeds, prior_seeds,
                                        prior, decoder)
        result.pixels = pixels
        return result

    def _conditioning(self, prompt: str | None, mix: list[MixItem] | None) -> list[MixItem]:
        if mix and prompt:
            raise UserError("give either a prompt or mix items (a prompt can be one of the mix items), not both")
        items = list(mix) if mix else [MixItem(text=prompt, weight=1.0)] if prompt is not None else []
        if not items:
            raise UserError("nothing to generate from: give a prompt, mix items or an image for variations")
        for item in items:
            item.validate()
        return items

    @staticmethod
    def _split_lora_tags(items):
        """(item, text to encode) pairs with `<lora:...>` tags taken out of texts, and the requests they make."""
        if not any(item.text and "<lora:" in item.text for item in items):
            return [(item, item.text) for item in items], []
        from .lora.requests import split_prompt

        pairs, requests = [], []
        for item in items:
            cleaned, found = split_prompt(item.text) if item.text is not None else (None, [])
            if item.text is not None and not cleaned:
                raise UserError(f"prompt {item.text!r} holds nothing but LoRA tags")
            pairs.append((item, cleaned))
            requests += found
        return pairs, requests

    # ---------------------------------------------------------------- LoRA adapters
    @property
    def loras(self):
        if self._loras is None:
            from .lora.manager import LoraManager

            self._loras = LoraManager(self)
        return self._loras

    def active_lora_records(self) -> list[dict]:
        """Name, weights, A1111 hash and file of each active adapter (none loaded: no manager is made)."""
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
    def image_embeddings(self, items, negative_prompt, prior_seeds, settings, progress):
        """Weighted sum of each item's image embedding, and the negative image embedding. Both (B, D)."""
        batch = len(prior_seeds)
        total, negative = 0, None
        for item in items:
            if item.text is not None:
                # As diffusers' Kandinsky 2.2 prior: a negative prompt is sampled in the same batch, and its
                # sample becomes the decoder's negative image embedding.
                texts = [item.text] * batch + ([negative_prompt] * batch if negative_prompt else [])
                seeds = prior_seeds * (2 if negative_prompt else 1)
                sampled = self.sample_prior(texts, negative_prompt, seeds, settings, progress)  # (B or 2B, D)
                embeds = sampled[:batch]
                if negative_prompt and negative is None:
                    negative = sampled[batch:]
            else:
                embeds = self.embed_image(item.image).repeat(batch, 1)  # (B, D)
            total = total + embeds * item.weight
        if negative is None:
            if negative_prompt:  # images only: sample the negative prompt on its own
                negative = self.sample_prior([negative_prompt] * batch, negative_prompt, prior_seeds, settings, progress)
            else:
                negative = self.zero_image_embed().repeat(batch, 1)  # (B, D)
        return total, negative

    def encode_text(self, texts: list[str]):
        """Tokens -> (pooled projected embedding (N, D), token states (N, T, W), attention mask (N, T))."""
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        self._warn_truncated(texts)
        out = self.text_encoder(tokens.input_ids.to(self.device))
        return out.text_embeds, out.last_hidden_state, tokens.attention_mask.bool().to(self.device)

    def _warn_truncated(self, texts: list[str]) -> None:
        limit = self.tokenizer.model_max_length
        for text in dict.fromkeys(texts):
            ids = self.tokenizer(text, verbose=False).input_ids
            if len(ids) > limit:
                dropped = self.tokenizer.decode(ids[limit - 1:-1])
                log.warning("prompt is longer than %d tokens; dropped: %r", limit, dropped)

    def sample_prior(self, texts, negative_prompt, seeds, settings: PriorSettings, progress) -> torch.Tensor:
        """Diffusion prior: sample CLIP image embeddings (N, D) for texts, one generator per row."""
        guided = settings.guidance > 1
        unique = list(dict.fromkeys(texts))
        embeds, states, mask = self.encode_text(unique)
        rows = [unique.index(t) for t in texts]
        embeds, states, mask = embeds[rows], states[rows], mask[rows]  # (N, D), (N, T, W), (N, T)
        if guided:
            # Unconditional rows go first and are encoded in a batch of the same size, as diffusers does: CPU
            # kernels round differently for other batch sizes, and parity with diffusers is tested to 1e-4.
            uncond = self.encode_text([negative_prompt] * len(unique))
            u_embeds, u_states, u_mask = (x[:1].expand(len(texts), *x.shape[1:]) for x in uncond)
            embeds, states, mask = torch.cat([u_embeds, embeds]), torch.cat([u_states, states]), torch.cat([u_mask, mask])

        scheduler = self._scheduler("prior", settings.scheduler)
        scheduler.set_timesteps(settings.steps, device=self.device)
        step = schedulers.stepper(scheduler)
        timesteps = scheduler.timesteps
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        shape = (len(texts), self.prior.config.embedding_dim)
        latents = randn_tensor(shape, generator=generators, device=self.device, dtype=embeds.dtype)  # (N, D)
        latents = latents * scheduler.init_noise_sigma
        for i, t in enumerate(tqdm(timesteps, desc="prior", disable=not progress, leave=False)):
            model_input = torch.cat([latents] * 2) if guided else latents  # (2N, D)
            model_input = scheduler.scale_model_input(model_input, t)
            predicted = self.prior(model_input, timestep=t, proj_embedding=embeds, encoder_hidden_states=states,
                                   attention_mask=mask).predicted_image_embedding  # (2N, D)
            if guided:
                unconditional, conditional = predicted.chunk(2)
                predicted = unconditional + settings.guidance * (conditional - unconditional)
            next_t = timesteps[i + 1] if i + 1 < len(timesteps) else None
            latents = step(predicted, t, latents, next_t, generators)
        return self.prior.post_process_latents(latents)  # (N, D): un-normalised with the prior's CLIP stats

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

    def decoder_text_states(self, items, negative_prompt, batch):
        """(negative, positive) token states (B, T, W) for a text-reading decoder, else None. A mix gives the
        tokens of its first text; image variations those of the empty prompt."""
        if not self.decoder_reads_text:
            return None
        text = next((item.text for item in items if item.text is not None), "")
        _, states, _ = self.encode_text([negative_prompt, text])  # (2, T, W)
        return states[:1].expand(batch, -1, -1), states[1:].expand(batch, -1, -1)

    def denoise(self, image_embeds, negative_embeds, seeds, settings: DecoderSettings, progress,
                text_states=None) -> torch.Tensor:
        """Latent diffusion decoder: the U-Net loop conditioned on image embeddings, one generator per image."""
        guided = settings.guidance > 1
        condition = torch.cat([negative_embeds, image_embeds]) if guided else image_embeds  # (2B, D)
        condition = condition.to(self.unet.dtype)
        tokens = None
        if text_states is not None:
            tokens = torch.cat(text_states) if guided else text_states[1]  # (2B, T, W)

        scheduler = self._scheduler("decoder", settings.scheduler)
        scheduler.set_timesteps(settings.steps, device=self.device)
        step = schedulers.stepper(scheduler)
        learned_variance = schedulers.uses_learned_variance(scheduler)
        channels = self.unet.config.in_channels
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        shape = (len(seeds), channels, settings.height // self.vae_scale_factor, settings.width // self.vae_scale_factor)
        latents = randn_tensor(shape, generator=generators, device=self.device, dtype=condition.dtype)  # (B, C, h, w)
        latents = latents * scheduler.init_noise_sigma
        timesteps = scheduler.timesteps
        windows = self._loras is not None and self._loras.has_step_windows()  # adapters on part of the loop only
        for i, t in enumerate(tqdm(timesteps, desc="decoder", disable=not progress, leave=False)):
            if windows:
                self._loras.at_decoder_fraction(i / len(timesteps))
            model_input = torch.cat([latents] * 2) if guided else latents  # (2B, C, h, w)
            model_input = scheduler.scale_model_input(model_input, t)
            output = self.unet(model_input, t, encoder_hidden_states=tokens,
                               added_cond_kwargs={"image_embeds": condition}).sample  # (2B, C or 2C, h, w)
            noise, variance = output[:, :channels], output[:, channels:]
            if guided:
                unconditional, conditional = noise.chunk(2)
                noise = unconditional + settings.guidance * (conditional - unconditional)  # (B, C, h, w)
                variance = variance.chunk(2)[1]
            model_output = torch.cat([noise, variance], dim=1) if learned_variance and variance.shape[1] else noise
            next_t = timesteps[i + 1] if i + 1 < len(timesteps) else None
            latents = step(model_output, t, latents, next_t, generators)
        if windows:
            self._loras.at_decoder_fraction(None)
        return latents

    def decode(self, latents: torch.Tensor):
        """VAE latents -> float pixels (B, H, W, 3) in [0, 1] as a numpy array."""
        pixels = self.vae_decode(self.vae, latents)  # (B, 3, H, W) in [-1, 1]
        if not torch.isfinite(pixels).all() and self.vae.dtype != torch.float32:
            log.warning("the VAE decode in %s gave NaN/inf values; decoded again in float32", self.vae.dtype)
            self.vae.to(torch.float32)
            pixels = self.vae_decode(self.vae, latents.float())
            self.vae.to(self.dtype)
        return (pixels * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()  # (B, H, W, 3)

    @staticmethod
    def vae_decode(vae, latents):
        if isinstance(vae, VQModel):
            # Kandinsky 2.2's U-Net works on MoVQ's unquantised, unscaled latents.
            return vae.decode(latents.to(vae.dtype), force_not_quantize=True).sample
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift).sample

    def with_defaults(self, prior: dict | None = None, decoder: dict | None = None) -> tuple[PriorSettings, DecoderSettings]:
        """The model's default settings with some fields replaced (unknown names raise TypeError)."""
        return (replace(self.model.prior_defaults, **(prior or {})),
                replace(self.model.decoder_defaults, **(decoder or {})))
