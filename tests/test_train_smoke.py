"""The training code end to end on a tiny config: four stages of 2 steps, the written Kandinsky 2.2 folder generates,
a resumed run skips finished stages, and a killed stage resumes from its checkpoint."""
from pathlib import Path

import pytest
import torch

from imagegen.errors import UserError
from imagegen.train.base.config import STAGES, TrainSettings, load_config, to_toml

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "shapes.toml"
STEPS = {"max_steps": 2, "warmup_steps": 1, "batch_size": 8, "minutes": 5.0}


def tiny_overrides(runs_dir: Path) -> dict:
    """The real recipe with every model and every set made tiny (characters-only tokenizer: a small embedding table)."""
    return {
        "run": {"runs_dir": str(runs_dir), "name": "tiny"},
        "clip": {"vocabulary": "bytes", "embed_dim": 16, "text_layers": 1, "text_heads": 2, "text_mlp": 32,
                 "vision_hidden": 32, "vision_layers": 1, "vision_heads": 2, "vision_mlp": 64, "eval_images": 8,
                 "init_from": "", "train_image_encoder": True, "train_text_encoder": True, "train": STEPS},
        "vae": {"channels": [8, 16, 16], "norm_groups": 8, "eval_images": 8, "train": STEPS},
        "prior": {"layers": 1, "heads": 2, "head_dim": 8, "stats_images": 16, "eval_images": 8, "eval_steps": 2,
                  "train": STEPS},
        "decoder": {"channels": [16, 32, 32], "cross_attention_dim": 16, "attention_head_dim": 8, "norm_groups": 8,
                    "eval_images": 8, "cache_batches": 2, "init_from": "", "train": STEPS},
        "samples": {"prompts": ["a red circle"], "prior_steps": 2, "decoder_steps": 2},
    }


def test_train_base_writes_a_loadable_model_and_resume_skips_finished_stages(tmp_path):
    import imagegen
    from imagegen.settings import DecoderSettings, PriorSettings
    from imagegen.train.base.run import train_base

    overrides = tiny_overrides(tmp_path / "runs")
    out = tmp_path / "model"
    first = train_base(CONFIG, out, resume=False, overrides=overrides)
    assert first["ran"] == list(STAGES) and first["skipped"] == []
    for stage in STAGES:
        assert first["metrics"][stage]["steps"] == STEPS["max_steps"]
    assert set(first["metrics"]["clip"]["zero_shot_accuracy"]) == {"shape", "colour", "background", "size", "position"}

    # Kandinsky 2.2 layout, safetensors only, and the recorded config reads back as the one used.
    assert {p.name for p in out.iterdir()} >= {"prior", "decoder", "training_config.toml", "metrics.json"}
    weights = [p.suffix for p in out.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and set(weights) == {".safetensors"}
    assert load_config(out / "training_config.toml") == load_config(CONFIG, overrides=overrides)

    pipe = imagegen.load_pipeline(str(out))
    assert pipe.vae.config.scaling_factor == pytest.approx(first["metrics"]["vae"]["scaling_factor"])
    result = pipe("a red circle", num_images=1, seed=0, prior=PriorSettings(steps=2),
                  decoder=DecoderSettings(steps=2, width=64, height=64), progress=False)
    assert result.images[0].size == (64, 64)

    with pytest.raises(UserError, match="--resume"):
        train_base(CONFIG, out, resume=False, overrides=overrides)
    again = train_base(CONFIG, out, resume=True, overrides=overrides)
    assert again["ran"] == [] and again["skipped"] == list(STAGES)
    assert (tmp_path / "runs" / "tiny" / "train.log").read_text().count("finished earlier, skipped") == len(STAGES)


def test_a_run_can_continue_finished_stages_with_one_tower_frozen(tmp_path):
    """init_from: CLIP and decoder start from an earlier run's weights; a frozen image tower comes out unchanged while
    the text tower learns (its heads read the stated attributes), and a frozen text tower while the image tower learns."""
    from safetensors.torch import load_file

    from imagegen.train.base.run import train_base

    runs = tmp_path / "runs"
    overrides = tiny_overrides(runs)
    train_base(CONFIG, tmp_path / "first", overrides=overrides)
    earlier = runs / "tiny"
    continued = {**overrides, "run": {"runs_dir": str(runs), "name": "continued"},
                 "clip": {**overrides["clip"], "init_from": str(earlier / "clip" / "final"),
                          "train_image_encoder": False},
                 "decoder": {**overrides["decoder"], "init_from": str(earlier / "decoder" / "final")}}
    result = train_base(CONFIG, tmp_path / "second", overrides=continued)
    assert result["ran"] == list(STAGES) and result["metrics"]["clip"]["steps"] == STEPS["max_steps"]
    assert set(result["metrics"]["clip"]["text_token_state_cosine"]) == {"shape", "colour", "position", "size"}

    def weights(run, part):
        return load_file(runs / run / "clip" / "final" / part / "model.safetensors")

    before, after = weights("tiny", "image_encoder"), weights("continued", "image_encoder")
    assert all(torch.equal(before[k], after[k]) for k in before)
    before, after = weights("tiny", "text_encoder"), weights("continued", "text_encoder")
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # The other way round (v0.5's recipe): the text tower locked, the image tower learning.
    locked_text = {**continued, "run": {"runs_dir": str(runs), "name": "locked-text"},
                   "clip": {**continued["clip"], "train_image_encoder": True, "train_text_encoder": False}}
    train_base(CONFIG, tmp_path / "fourth", overrides=locked_text)
    before, after = weights("tiny", "text_encoder"), weights("locked-text", "text_encoder")
    assert all(torch.equal(before[k], after[k]) for k in before)
    before, after = weights("tiny", "image_encoder"), weights("locked-text", "image_encoder")
    assert any(not torch.equal(before[k], after[k]) for k in before)

    frozen = {**locked_text, "run": {"runs_dir": str(runs), "name": "frozen"},
              "clip": {**locked_text["clip"], "train_image_encoder": False}}
    with pytest.raises(UserError, match="train_image_encoder and train_text_encoder are both false"):
        train_base(CONFIG, tmp_path / "fifth", overrides=frozen)

    missing = {**continued, "run": {"runs_dir": str(runs), "name": "missing"},
               "clip": {**continued["clip"], "init_from": str(tmp_path / "nowhere")}}
    with pytest.raises(UserError, match="clip.init_from .*nowhere.* is not a finished CLIP stage"):
        train_base(CONFIG, tmp_path / "third", overrides=missing)


def test_a_run_reuses_a_finished_models_stages_and_fine_tunes_the_vae_decoder_alone(tmp_path):
    """v0.6's recipe: clip, prior and decoder copied from a finished model (run.reuse_stages), the VAE continued from
    its movq with the encoder frozen on batches that mix in hearts and outlines: the encoder, the scaling factor and
    the reused parts come out bit-identical, the VAE decoder changes."""
    from safetensors.torch import load_file

    from imagegen.train.base.run import train_base
    from imagegen.train.base.vae import vae_batch

    runs = tmp_path / "runs"
    overrides = tiny_overrides(runs)
    first = tmp_path / "first"
    train_base(CONFIG, first, overrides=overrides)
    continued = {**overrides, "run": {"runs_dir": str(runs), "name": "v06", "reuse_from": str(first),
                                      "reuse_stages": ["clip", "prior", "decoder"]},
                 "vae": {**overrides["vae"], "init_from": str(first / "decoder" / "movq"), "train_encoder": False,
                         "heart_share": 0.25, "outline_share": 0.25}}
    second = tmp_path / "second"
    result = train_base(CONFIG, second, overrides=continued)
    assert result["ran"] == ["vae"] and result["reused"] == ["clip", "prior", "decoder"]
    assert result["metrics"]["prior"]["reused_from"] == str(first)
    for part in ("prior/prior", "prior/text_encoder", "prior/image_encoder", "decoder/unet"):
        before, after = (load_file(next((root / part).glob("*.safetensors"))) for root in (first, second))
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), part
    before, after = (load_file(root / "decoder" / "movq" / "diffusion_pytorch_model.safetensors")
                     for root in (first, second))
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in before if k.startswith("decoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    import json

    scale = [json.loads((root / "decoder" / "movq" / "config.json").read_text())["scaling_factor"]
             for root in (first, second)]
    assert scale[0] == scale[1]

    config = load_config(CONFIG, overrides=continued)
    batch = vae_batch(config, step=3)
    kinds = [(a.shape == "heart", a.style) for a in batch.attributes]
    assert len(kinds) == 8 and kinds.count((True, "filled")) == 2 and sum(s == "outline" for _, s in kinds) == 2

    frozen_random = {**continued, "run": {**continued["run"], "name": "frozen-random"},
                     "vae": {**continued["vae"], "init_from": ""}}
    with pytest.raises(UserError, match="train_encoder = false needs vae.init_from"):
        train_base(CONFIG, tmp_path / "third", overrides=frozen_random)
    typo = {**continued, "run": {**continued["run"], "name": "typo", "reuse_stages": ["clip", "vea"]}}
    with pytest.raises(UserError, match=r"run.reuse_stages \['clip', 'vea'\] needs stages from"):
        train_base(CONFIG, tmp_path / "typo", overrides=typo)
    nowhere = {**continued, "run": {**continued["run"], "name": "nowhere", "reuse_from": str(tmp_path / "none")}}
    with pytest.raises(UserError, match="has no prior/tokenizer/ to reuse as the clip stage"):
        train_base(CONFIG, tmp_path / "fourth", overrides=nowhere)


def test_the_vae_decoder_learns_the_unets_redrawn_latents_and_the_prior_continues_on_cached_embeddings(tmp_path):
    """v0.7's recipe: the VAE decoder (encoder frozen) trains on latents a finished U-Net re-drew image-to-image, and
    the prior continues a finished one (prior.init_from) on cached image embeddings with an EMA."""
    from safetensors.torch import load_file

    from imagegen.train.base import generated
    from imagegen.train.base.data import training_batch
    from imagegen.train.base.run import train_base
    from imagegen.train.base.vae import load_frozen_vae

    runs = tmp_path / "runs"
    overrides = tiny_overrides(runs)
    first = tmp_path / "first"
    train_base(CONFIG, first, overrides=overrides)
    redrawn = {"decoder_from": str(first / "decoder"), "share": 0.5, "cache_images": 8, "steps": 4, "strength": 0.5}
    continued = {**overrides, "run": {"runs_dir": str(runs), "name": "v07", "reuse_from": str(first),
                                      "reuse_stages": ["clip", "decoder"]},
                 "vae": {**overrides["vae"], "init_from": str(first / "decoder" / "movq"), "train_encoder": False,
                         "generated": redrawn, "focus": {"share": 0.25, "shape": "star", "size": "small"}},
                 "prior": {**overrides["prior"], "init_from": str(first / "prior"), "cache_images": 16,
                           "ema_decay": 0.9}}
    second = tmp_path / "second"
    result = train_base(CONFIG, second, overrides=continued)
    assert result["ran"] == ["vae", "prior"] and result["reused"] == ["clip", "decoder"]
    log = (runs / "v07" / "train.log").read_text()
    assert "mse_generated=" in log  # the VAE's loss saw the redrawn latents

    before, after = (load_file(root / "decoder" / "movq" / "diffusion_pytorch_model.safetensors")
                     for root in (first, second))
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    before, after = (load_file(root / "prior" / "prior" / "diffusion_pytorch_model.safetensors")
                     for root in (first, second))
    assert torch.equal(before["clip_mean"], after["clip_mean"])  # continued with its own normalisation
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("transformer_blocks."))

    # The U-Net's re-drawing: deterministic in its seed, and a real change of the encoder's latent.
    config = load_config(CONFIG, overrides=continued)
    vae = load_frozen_vae(runs / "tiny" / "vae" / "final")
    unet, shipped = generated.load_decoder(str(first / "decoder"))
    clip = generated.load_frozen_clip(runs / "tiny" / "clip" / "final")
    batch = training_batch(0, 0, 4)
    once, again, other = (generated.redraw(config, vae, unet, shipped, clip, batch, seed) for seed in (1, 1, 2))
    encoded = vae.encode(batch.pixels()).latent_dist.mean
    assert once.shape == encoded.shape and torch.equal(once, again) and not torch.equal(once, other)
    assert not torch.allclose(once, encoded, atol=1e-3)

    learning_encoder = {**continued, "run": {**continued["run"], "name": "learning"},
                        "vae": {**continued["vae"], "train_encoder": True}}
    with pytest.raises(UserError, match="vae.generated needs vae.train_encoder = false"):
        train_base(CONFIG, tmp_path / "third", overrides=learning_encoder)
    no_prior = {**continued, "run": {**continued["run"], "name": "no-prior"},
                "prior": {**continued["prior"], "init_from": str(tmp_path)}}
    with pytest.raises(UserError, match="prior.init_from .* holds no prior/ folder"):
        train_base(CONFIG, tmp_path / "fourth", overrides=no_prior)


def test_a_vae_batch_mixes_in_its_focus_cell_and_a_misspelt_cell_is_a_one_line_error(tmp_path):
    """v0.8's recipe: `[vae.focus]` draws a share of every VAE batch from one cell of the world (small stars); the
    rest of the batch stays the base world, and the same step gives the same batch."""
    from imagegen.train.base.run import train_base
    from imagegen.train.base.vae import vae_batch

    overrides = tiny_overrides(tmp_path / "runs")
    focused = {**overrides, "vae": {**overrides["vae"], "train": {**overrides["vae"].get("train", {}), "batch_size": 16},
                                    "focus": {"share": 0.25, "shape": "star", "size": "small"}}}
    config = load_config(CONFIG, overrides=focused)
    batch = vae_batch(config, step=5)
    cells = [(a.shape, a.size) for a in batch.attributes]
    assert len(cells) == 16 and cells[-4:] == [("star", "small")] * 4
    assert cells[:-4].count(("star", "small")) < 12  # the base world is not all focus
    assert [a.shape for a in vae_batch(config, step=5).attributes] == [a.shape for a in batch.attributes]
    assert [a.shape for a in vae_batch(config, step=6).attributes] != [a.shape for a in batch.attributes]

    any_size = load_config(CONFIG, overrides={**focused, "vae": {**focused["vae"], "focus": {"share": 0.25, "shape": "star", "size": ""}}})
    stars = [(a.shape, a.size) for step in range(4) for a in vae_batch(any_size, step).attributes[-4:]]
    assert {shape for shape, _ in stars} == {"star"} and len({size for _, size in stars}) > 1

    typo = {**focused, "run": {"runs_dir": str(tmp_path / "runs"), "name": "typo"},
            "vae": {**focused["vae"], "focus": {"share": 0.25, "shape": "starr", "size": "small"}}}
    with pytest.raises(UserError, match=r"^vae.focus.shape 'starr' is not one of circle, square, triangle, star, cross"):
        train_base(CONFIG, tmp_path / "typo", overrides=typo)
    assert not (tmp_path / "runs" / "typo" / "clip").exists()  # failed before any stage trained
    crowded = load_config(CONFIG, overrides={**focused, "vae": {**focused["vae"], "heart_share": 0.5,
                                                               "outline_share": 0.5}})
    with pytest.raises(UserError, match=r"add up to more than the batch \(8 \+ 8 \+ 4 \+ 0 > 16\)"):
        vae_batch(crowded, step=0)


def test_the_from_scratch_recipe_trains_every_stage_from_random_weights_then_tunes_its_vae_on_its_own_unet(tmp_path):
    """`make shapes-from-scratch`: part 1 trains all four stages from random weights, part 2 reuses part 1's clip, prior
    and decoder and tunes its VAE decoder (encoder frozen) on the latents part 1's U-Net re-draws; tiny sizes here."""
    from safetensors.torch import load_file

    from imagegen.train.base.run import train_base

    recipes = CONFIG.parent
    part1, part2 = recipes / "shapes-scratch.toml", recipes / "shapes-scratch-vae.toml"
    makefile = (CONFIG.parents[2] / "Makefile").read_text()
    first_out = load_config(part2).run.reuse_from
    assert f"--config configs/train/shapes-scratch.toml --out {first_out} --resume" in makefile
    assert "--config configs/train/shapes-scratch-vae.toml" in makefile
    assert load_config(part2).vae.init_from == f"{first_out}/decoder/movq"
    assert load_config(part2).vae.generated.decoder_from == f"{first_out}/decoder"
    scratch = load_config(part1)
    assert not (scratch.run.reuse_stages or scratch.clip.init_from or scratch.vae.init_from or scratch.prior.init_from
                or scratch.decoder.init_from)

    runs = tmp_path / "runs"
    tiny = tiny_overrides(runs)
    tiny["run"] = {"runs_dir": str(runs), "name": "scratch"}
    tiny["clip"] = {k: v for k, v in tiny["clip"].items() if k not in ("init_from", "train_image_encoder",
                                                                       "train_text_encoder")}
    first = tmp_path / "first"
    assert train_base(part1, first, resume=True, overrides=tiny)["ran"] == ["clip", "vae", "prior", "decoder"]
    redrawn = {"decoder_from": str(first / "decoder"), "cache_images": 8, "steps": 4}
    second_overrides = {**tiny, "run": {"runs_dir": str(runs), "name": "scratch-vae", "reuse_from": str(first)},
                        "vae": {**tiny["vae"], "init_from": str(first / "decoder" / "movq"), "generated": redrawn}}
    result = train_base(part2, tmp_path / "second", resume=True, overrides=second_overrides)
    assert result["ran"] == ["vae"] and result["reused"] == ["clip", "prior", "decoder"]
    assert "mse_generated=" in (runs / "scratch-vae" / "train.log").read_text()
    before, after = (load_file(root / "decoder" / "movq" / "diffusion_pytorch_model.safetensors")
                     for root in (first, tmp_path / "second"))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))


def test_a_stopped_stage_resumes_from_its_checkpoint(tmp_path):
    from imagegen.train.base import loop

    run = load_config(CONFIG).run
    settings = TrainSettings(seed=0, batch_size=1, lr=1e-2, weight_decay=0.0, adam_betas=(0.9, 0.999),
                             warmup_steps=1, max_steps=3, minutes=5.0, grad_clip=1.0, bf16=False)
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    seen = {}  # step -> the weights it started from

    def loss_fn(step):
        seen[step] = model.weight.detach().clone()
        return model(torch.ones(1, 2)).pow(2).mean(), {}

    loop.train("toy", tmp_path, model, loss_fn, settings, run)
    weights_after_3 = model.weight.detach().clone()
    model = torch.nn.Linear(2, 1)  # a fresh process: new weights, then the checkpoint
    loop.train("toy", tmp_path, model, loss_fn, settings.__class__(**{**settings.__dict__, "max_steps": 5}), run)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert torch.equal(seen[3], weights_after_3)  # step 3 started from the checkpoint, not from the fresh weights
    assert loop.load_state(tmp_path / "checkpoint.safetensors")["step"] == 5
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_checkpoint_is_a_safetensors_file_that_restores_optimizer_ema_and_rng_exactly(tmp_path):
    """No pickle in a checkpoint (it may be committed to outlive a session): safetensors tensors plus JSON structure;
    loading it gives the same optimizer, LR schedule and EMA state, so a resumed step equals the uninterrupted one.
    A legacy checkpoint.pt (torch.save of the same state) still resumes, and is replaced by the new file."""
    from diffusers.training_utils import EMAModel
    from safetensors import safe_open

    from imagegen.train.base import loop

    run = load_config(CONFIG).run
    settings = TrainSettings(seed=0, batch_size=1, lr=1e-2, weight_decay=0.1, adam_betas=(0.9, 0.99),
                             warmup_steps=2, max_steps=4, minutes=5.0, grad_clip=1.0, bf16=False)

    def fresh():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))
        return model, EMAModel(model.parameters(), decay=0.9)

    def loss_fn_for(model):
        def loss_fn(step):
            noise = torch.randn(2, 3)  # from the torch RNG, which the checkpoint must restore
            return model(noise + step).pow(2).mean(), {}
        return loss_fn

    straight, straight_ema = fresh()
    loop.train("toy", tmp_path / "straight", straight, loss_fn_for(straight), settings, run, ema=straight_ema)

    stopped, stopped_ema = fresh()
    short = settings.__class__(**{**settings.__dict__, "minutes": 0.0})  # the clock ends it at once: step 0
    loop.train("toy", tmp_path / "resumed", stopped, loss_fn_for(stopped), short, run, ema=stopped_ema)
    path = tmp_path / "resumed" / "checkpoint.safetensors"
    with safe_open(path, framework="pt") as opened:
        assert opened.metadata()["format"] == "imagegen.state/1" and "model/0.weight" in opened.keys()
    state = loop.load_state(path)
    assert state["step"] == 0 and isinstance(state["ema"]["shadow_params"], list)

    # Two steps, a "new process" (fresh objects) resuming for the last two: the same weights and EMA as straight.
    two = settings.__class__(**{**settings.__dict__, "max_steps": 2})
    resumed, resumed_ema = fresh()
    loop.train("toy", tmp_path / "two", resumed, loss_fn_for(resumed), two, run, ema=resumed_ema)
    again, again_ema = fresh()
    with torch.no_grad():
        for p in again.parameters():
            p.add_(1.0)  # different weights before loading: the checkpoint must overwrite them
    loop.train("toy", tmp_path / "two", again, loss_fn_for(again), settings, run, ema=again_ema)
    for a, b in zip(straight.parameters(), again.parameters()):
        assert torch.allclose(a, b, atol=1e-7)
    for a, b in zip(straight_ema.shadow_params, again_ema.shadow_params):
        assert torch.allclose(a, b, atol=1e-7)

    legacy_dir = tmp_path / "legacy"
    legacy_dir.mkdir()
    torch.save(loop.load_state(tmp_path / "two" / "checkpoint.safetensors"), legacy_dir / "checkpoint.pt")
    old, old_ema = fresh()
    loop.train("toy", legacy_dir, old, loss_fn_for(old), settings.__class__(**{**settings.__dict__, "max_steps": 5}),
               run, ema=old_ema)
    assert loop.load_state(legacy_dir / "checkpoint.safetensors")["step"] == 5
    assert not (legacy_dir / "checkpoint.pt").exists()


def test_written_config_round_trips():
    config = load_config(CONFIG, smoke=True)
    assert config.run.name.endswith("-smoke") and config.decoder.train.max_steps == config.smoke.max_steps
    import tomllib

    assert tomllib.loads(to_toml(config))["clip"]["zero_shot_prompts"]["shape"] == config.clip.zero_shot_prompts.shape


@pytest.mark.parametrize("recipe", sorted(CONFIG.parent.glob("*.toml")), ids=lambda p: p.name)
def test_every_training_recipe_in_configs_reads(recipe):
    """Every recipe kept in configs/train/ has exactly the keys the code reads (a stale one fails here, not mid-run)."""
    config = load_config(recipe)
    assert config.clip.train_image_encoder or config.clip.train_text_encoder
