"""Kandinsky 2.2's published architectures with random weights, written in the on-disk layout of the real
checkpoints (`kandinsky-community/kandinsky-2-2-prior` and `kandinsky-community/kandinsky-2-2-decoder`), so that
full-size performance can be measured without downloading anything.

    python -m imagegen.build.kandinsky22 OUT --parts decoder|prior|all --dtype float32|bfloat16|float16
                                         [--width-divisor N] [--max-layers N] [--seed S]

Where each configuration comes from (all read from stored public copies, nothing fetched at run time):

* decoder U-Net (UNet2DConditionModel, 1.22B): the `unet/config.json` of kandinsky-community/kandinsky-2-2-decoder,
  as re-published by fine-tunes that name it in `_name_or_path` (e.g. JVice/BAGM_kdsky_decoder_deep_1k,
  YiYiXu/yiyi_kandinsky_decoder) and by kandinsky-community/kandinsky-2-2-decoder-refiner; the same block layout
  as `UNET_CONFIG` in diffusers' scripts/convert_kandinsky_to_diffusers.py (2.1), with 2.2's image-only conditioning
  (`encoder_hid_dim` 1280, `encoder_hid_dim_type` "image_proj", `addition_embed_type` "image").
* MoVQ (VQModel, 67M): `MOVQ_CONFIG` in diffusers' scripts/convert_kandinsky_to_diffusers.py, identical to the
  decoder repository's `movq/config.json` (ch 128, ch_mult [1, 2, 2, 4], 16384 codes, 4-d latents, attention at
  the lowest resolution: CONFIG_2_1 in ai-forever/Kandinsky-2 kandinsky2/configs.py).
* prior (PriorTransformer, 1B): `prior/config.json` of kandinsky-community/kandinsky-2-2-prior (via
  YiYiXu/kandinsky_prior_pokemon and daehan17/prior-weightupdate, whose `_name_or_path` is that repository).
* text encoder (CLIPTextModelWithProjection, ViT-bigG/14 text tower, 695M) and image encoder
  (CLIPVisionModelWithProjection, ViT-bigG/14, 1.8B): `text_encoder/config.json` and `image_encoder/config.json` of
  kandinsky-community/kandinsky-2-2-prior (same copies). Parameter counts match ai-forever/Kandinsky-2's README
  ("Diffusion Image Prior - 1B, CLIP image encoder - 1.8B, Latent Diffusion U-Net - 1.22B, MoVQ - 67M").
* schedulers: `scheduler/scheduler_config.json` of both repositories (UnCLIPScheduler for the prior, DDPMScheduler
  for the decoder); image processor: `image_processor/preprocessor_config.json` (CLIPImageProcessor, 224).
* tokenizer: the real CLIP BPE (49,408 tokens, padded with <|endoftext|>, 77 positions), built offline by
  imagegen.build.tokenizer.

Weights are each module's default random initialisation (seeded). Each component is built, cast, saved and freed in
turn, so the peak is the largest single component (the image tower: 7.4 GB in float32), not the ~19 GB of all of
them. Weight files are sharded at 2 GB (diffusers/transformers load shards the same way) so that saving does not
copy a whole component at once.

A decoder-only build (`--parts decoder`) still writes a loadable `prior/` folder: a one-layer stand-in with the real
widths (so its 1280-d image embeddings fit the real decoder), recorded as such in OUT/kandinsky22_build.json; the
same for `--parts prior` and the decoder. `--width-divisor` (a power of two up to 32) and `--max-layers` shrink the
real architecture for tests: same blocks and wiring, narrower and shallower.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

PARTS = ("decoder", "prior", "all")
DTYPES = ("float32", "bfloat16", "float16")
SHARD = "2GB"
BUILD_RECORD = "kandinsky22_build.json"

TEXT_ENCODER = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                    num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
                    projection_dim=1280, bos_token_id=0, eos_token_id=2, pad_token_id=1)
IMAGE_ENCODER = dict(hidden_size=1664, intermediate_size=8192, num_hidden_layers=48, num_attention_heads=16,
                     image_size=224, patch_size=14, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-5,
                     projection_dim=1280)
PRIOR = dict(num_attention_heads=32, attention_head_dim=64, num_layers=20, embedding_dim=1280, num_embeddings=77,
             additional_embeddings=4, dropout=0.0, time_embed_act_fn="silu", norm_in_type=None,
             embedding_proj_norm_type=None, encoder_hid_proj_type="linear", added_emb_type="prd")
UNET = dict(in_channels=4, out_channels=8, block_out_channels=(384, 768, 1152, 1536), layers_per_block=3,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                              "SimpleCrossAttnDownBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                            "ResnetUpsampleBlock2D"),
            attention_head_dim=64, cross_attention_dim=768, encoder_hid_dim=1280, encoder_hid_dim_type="image_proj",
            addition_embed_type="image", addition_embed_type_num_heads=64, class_embed_type=None,
            resnet_time_scale_shift="scale_shift", norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
            flip_sin_to_cos=True, freq_shift=0, only_cross_attention=False, sample_size=64)
MOVQ = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 256, 512),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D",
                              "AttnDownEncoderBlock2D"),
            up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
            layers_per_block=2, norm_num_groups=32, norm_type="spatial", num_vq_embeddings=16384, vq_embed_dim=4,
            act_fn="silu", sample_size=32, scaling_factor=0.18215)
PRIOR_SCHEDULER = dict(num_train_timesteps=1000, clip_sample=True, clip_sample_range=10.0, prediction_type="sample",
                       variance_type="fixed_small_log")
DECODER_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
                         thresholding=False)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_PROCESSOR = dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                       do_normalize=True, do_resize=True, resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD)
PRIOR_INDEX = {"_class_name": "KandinskyV22PriorPipeline",
               "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
               "image_processor": ["transformers", "CLIPImageProcessor"], "prior": ["diffusers", "PriorTransformer"],
               "scheduler": ["diffusers", "UnCLIPScheduler"],
               "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
               "tokenizer": ["transformers", "CLIPTokenizer"]}
DECODER_INDEX = {"_class_name": "KandinskyV22Pipeline", "movq": ["diffusers", "VQModel"],
                 "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"]}
COMPONENTS = {"prior": ("text_encoder", "image_encoder", "prior"), "decoder": ("unet", "movq")}
# Published sizes (ai-forever/Kandinsky-2 README; the text tower is ViT-bigG/14's, as in SDXL's text_encoder_2).
PUBLISHED_PARAMETERS = {"prior": 1.0e9, "image_encoder": 1.8e9, "unet": 1.22e9, "movq": 67e6, "text_encoder": 695e6}


@dataclass(frozen=True)
class Scale:
    """1, None: the real architecture. width_divisor narrows every width (the 1280-d embedding included), keeping
    head counts where the head size is what the model fixes and head sizes where the head count is; max_layers caps
    every depth (layers per block, transformer layers)."""

    width_divisor: int = 1
    max_layers: int | None = None

    def __post_init__(self):
        if self.width_divisor not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"width divisor must be a power of two from 1 to 32, got {self.width_divisor!r}")
        if self.max_layers is not None and self.max_layers < 1:
            raise ValueError(f"max layers must be >= 1, got {self.max_layers!r}")

    def w(self, width: int) -> int:
        return width // self.width_divisor

    def heads(self, heads: int) -> int:
        return max(1, heads // self.width_divisor)

    def depth(self, layers: int) -> int:
        return layers if self.max_layers is None else min(layers, self.max_layers)

    @property
    def real(self) -> bool:
        return self.width_divisor == 1 and self.max_layers is None


REAL = Scale()


def configs(scale: Scale = REAL) -> dict[str, dict]:
    """Constructor arguments of every model, at `scale` (the published ones at the default)."""
    s = scale
    embed = s.w(1280)
    text = dict(TEXT_ENCODER, hidden_size=s.w(1280), intermediate_size=s.w(5120), num_attention_heads=s.heads(20),
                num_hidden_layers=s.depth(32), projection_dim=embed)
    image = dict(IMAGE_ENCODER, hidden_size=s.w(1664), intermediate_size=s.w(8192), num_attention_heads=s.heads(16),
                 num_hidden_layers=s.depth(48), projection_dim=embed)
    prior = dict(PRIOR, num_attention_heads=s.heads(32), embedding_dim=embed, num_layers=s.depth(20))
    unet = dict(UNET, block_out_channels=tuple(s.w(c) for c in UNET["block_out_channels"]),
                attention_head_dim=s.w(64), cross_attention_dim=s.w(768), encoder_hid_dim=embed,
                norm_num_groups=s.w(32), layers_per_block=s.depth(3))
    # MoVQ's SpatialNorm always uses 32 groups: its widths stay multiples of 32.
    movq = dict(MOVQ, block_out_channels=tuple(max(32, s.w(c)) for c in MOVQ["block_out_channels"]),
                layers_per_block=s.depth(2))
    return {"text_encoder": text, "image_encoder": image, "prior": prior, "unet": unet, "movq": movq}


def make_model(name: str, config: dict):
    """One model from its constructor arguments, on the current default device (meta: no memory)."""
    if name == "text_encoder":
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        return CLIPTextModelWithProjection(CLIPTextConfig(**config))
    if name == "image_encoder":
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        return CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
    import diffusers

    cls = {"prior": diffusers.PriorTransformer, "unet": diffusers.UNet2DConditionModel, "movq": diffusers.VQModel}[name]
    return cls(**config)


def parameter_counts(scale: Scale = REAL) -> dict[str, int]:
    """Parameters of every model, constructed on the meta device (no weights are allocated)."""
    import torch

    counts = {}
    for name, config in configs(scale).items():
        with torch.device("meta"):
            model = make_model(name, config)
        assert all(p.is_meta for p in model.parameters())
        counts[name] = sum(p.numel() for p in model.parameters())
        del model
    return counts


def _save_model(model, folder: Path) -> None:
    if hasattr(model, "save_config"):  # diffusers
        model.save_pretrained(folder, safe_serialization=True, max_shard_size=SHARD)
    else:  # transformers: always safetensors
        model.save_pretrained(folder, max_shard_size=SHARD)


def _write_index(folder: Path, index: dict) -> None:
    import diffusers

    index = {"_class_name": index["_class_name"], "_diffusers_version": diffusers.__version__,
             **{k: v for k, v in sorted(index.items()) if not k.startswith("_")}}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def save_part(folder: Path, part: str, scale: Scale, dtype: str, seed: int, device: str = "cpu") -> dict[str, int]:
    """Write one pipeline folder (`prior` or `decoder`); returns each model's parameter count."""
    import diffusers.utils.logging
    import torch
    import transformers.utils.logging
    from diffusers import DDPMScheduler, UnCLIPScheduler

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()  # "modules to keep in float32: []" on every cast
    folder.mkdir(parents=True, exist_ok=True)
    torch_dtype = getattr(torch, dtype)
    counts = {}
    for offset, name in enumerate(COMPONENTS[part]):
        torch.manual_seed(seed + offset)
        with torch.device(device):
            model = make_model(name, configs(scale)[name])
        if torch_dtype != torch.float32:
            model.to(torch_dtype)
        model.eval()
        counts[name] = sum(p.numel() for p in model.parameters())
        _save_model(model, folder / name)
        del model
        gc.collect()
    if part == "prior":
        from transformers import CLIPImageProcessor

        from .tokenizer import build_clip_tokenizer

        build_clip_tokenizer("clip", model_max_length=77).save_pretrained(folder / "tokenizer")
        CLIPImageProcessor(**IMAGE_PROCESSOR).save_pretrained(folder / "image_processor")
        UnCLIPScheduler(**PRIOR_SCHEDULER).save_pretrained(folder / "scheduler")
        _write_index(folder, PRIOR_INDEX)
    else:
        DDPMScheduler.from_config(DECODER_SCHEDULER).save_pretrained(folder / "scheduler")  # ignores set_alpha_to_one
        _write_index(folder, DECODER_INDEX)
    return counts


def save_kandinsky22(out: str | Path, parts: str = "all", dtype: str = "float32", scale: Scale = REAL, seed: int = 0,
                     device: str = "cpu") -> Path:
    """Write OUT/prior and OUT/decoder (a loadable imagegen model folder). The part(s) not asked for are one-layer
    stand-ins of the same width, so that the folder loads and the embeddings fit."""
    if parts not in PARTS:
        raise ValueError(f"parts must be one of {PARTS}, got {parts!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    out = Path(out)
    stand_in = Scale(scale.width_divisor, 1)
    record = {"architecture": "Kandinsky 2.2 (kandinsky-community/kandinsky-2-2-prior + -decoder), random weights",
              "dtype": dtype, "seed": seed, "parts": {}}
    for part in ("prior", "decoder"):
        chosen = parts in (part, "all")
        part_scale = scale if chosen else stand_in
        counts = save_part(out / part, part, part_scale, dtype, seed + (0 if part == "prior" else 100), device)
        record["parts"][part] = {"stand_in": not chosen, "scale": asdict(part_scale), "parameters": counts}
    (out / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return out


def read_build_record(folder: str | Path) -> dict:
    return json.loads((Path(folder) / BUILD_RECORD).read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imagegen.build.kandinsky22", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write (gets prior/ and decoder/)")
    parser.add_argument("--parts", choices=PARTS, default="all", help="what to build at full size (default all)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weights' dtype on disk (default float32)")
    parser.add_argument("--width-divisor", type=int, default=1, help="narrow every width by this (tests; default 1)")
    parser.add_argument("--max-layers", type=int, default=None, help="cap every depth (tests; default: real depths)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where to initialise the weights (cuda is faster)")
    parser.add_argument("--count-only", action="store_true", help="print the parameter counts (meta device) and stop")
    args = parser.parse_args(argv)
    try:
        scale = Scale(args.width_divisor, args.max_layers)
    except ValueError as err:
        parser.error(str(err))
    if args.count_only:
        for name, count in parameter_counts(scale).items():
            print(f"{name:14s} {count:>14,d}")
        return 0
    out = save_kandinsky22(args.out, args.parts, args.dtype, scale, args.seed, args.device)
    record = read_build_record(out)
    for part, info in record["parts"].items():
        kind = "stand-in" if info["stand_in"] else "built"
        counts = ", ".join(f"{name} {count / 1e6:,.1f}M" for name, count in info["parameters"].items())
        print(f"{part:8s} {kind:8s} {counts}")
    print(f"wrote {out} ({args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
