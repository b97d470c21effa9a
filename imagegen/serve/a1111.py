"""AUTOMATIC1111's web UI API (/sdapi/v1), as far as the unmodified `webuiapi` client, editor plugins and bots use it.

txt2img takes A1111's fields (unknown ones are ignored, as A1111 does) and our prior's as extra fields
(`prior_steps`, `prior_cfg_scale`, `prior_seed`); a field left out takes the model's default, not A1111's 512x512
at 50 steps. `sampler_name` takes A1111's names, each mapped to our nearest scheduler; `scheduler` (A1111's
schedule type) is accepted and has no effect. Adapters come from `<lora:NAME:W>` in the prompt, by name only. The
answer is A1111's: raw base64 PNGs (each with its infotext), the request as `parameters`, `info` as a JSON string.
"""
from __future__ import annotations

import base64
import io
import json
import time

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..errors import Interrupted, UserError
from ..record import NEGATIVE_PREFIX, SAMPLER_NAMES, parse_params_line
from . import generation, interrogate
from .generation import FieldError

ORIGIN = "a1111"
FIELDS = {"prompt": "prompt", "negative": "negative_prompt", "seed": "seed", "prior_seed": "prior_seed",
          "count": "batch_size", "steps": "steps", "guidance": "cfg_scale", "sampler": "sampler_name",
          "prior_steps": "prior_steps", "prior_guidance": "prior_cfg_scale", "width": "width", "height": "height"}


class Txt2Img(BaseModel):
    model_config = ConfigDict(extra="allow")  # what we do not know is ignored, as A1111 does

    prompt: str = ""
    negative_prompt: str | None = ""
    seed: int | None = -1
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    sampler_name: str | None = None
    sampler_index: str | None = None  # A1111's older name for sampler_name
    scheduler: str | None = None
    override_settings: dict | None = None
    enable_hr: bool | None = False
    send_images: bool | None = True
    prior_steps: int | None = None
    prior_cfg_scale: float | None = None
    prior_seed: int | None = -1


class ImageBody(BaseModel):
    image: str = ""
    model: str | None = "clip"


class Options(BaseModel):
    model_config = ConfigDict(extra="allow")

    sd_model_checkpoint: str | None = None


def router(server, auth) -> APIRouter:
    api = APIRouter(prefix="/sdapi/v1", dependencies=[auth], tags=["AUTOMATIC1111"])

    @api.post("/txt2img")
    async def txt2img(body: Txt2Img, request: Request):
        pipe = await server.ready()
        checked = check(pipe, server, body)
        try:
            result = await server.generate(checked, ORIGIN, request)
        except Interrupted:
            return {"images": [], "parameters": body.model_dump(), "info": json.dumps({"interrupted": True})}
        files = await run_in_threadpool(server.png_files, result)
        images = [base64.b64encode(data).decode() for data in files] if body.send_images is not False else []
        return {"images": images, "parameters": body.model_dump(), "info": json.dumps(info(pipe, checked, result))}

    @api.get("/sd-models")
    async def sd_models():
        pipe = await server.ready()
        loaded = pipe.model.name
        return [{"title": name, "model_name": name, "hash": pipe.fingerprint()[:10] if name == loaded else None,
                 "sha256": None, "filename": ref, "config": None} for name, ref in server.model_choices().items()]

    @api.get("/samplers")
    async def samplers():
        return [{"name": a1111, "aliases": [ours], "options": {}} for a1111, ours in generation.sampler_choices()]

    @api.get("/schedulers")
    async def schedulers():
        return [{"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1,
                 "need_inner_model": False}]

    @api.get("/loras")
    async def loras():
        from ..lora import files

        found = []
        for name, path in sorted(files.available().items()):
            try:
                metadata = files.metadata(path)
            except UserError:
                metadata = {}
            found.append({"name": name, "alias": name, "path": str(path), "metadata": metadata})
        return found

    @api.post("/refresh-loras")
    async def refresh_loras():
        return {}  # the folders are read at every request

    @api.get("/scripts")
    async def scripts():
        return {"txt2img": [], "img2img": []}

    @api.get("/options")
    async def get_options():
        pipe = await server.ready()
        return {"sd_model_checkpoint": pipe.model.name, "sd_checkpoint_hash": pipe.fingerprint(),
                "samples_format": "png", "outdir_samples": server.options.outputs_folder or "",
                "sd_lora": "", "CLIP_stop_at_last_layers": 1}

    @api.post("/options")
    async def set_options(body: Options):
        if body.sd_model_checkpoint is not None:
            await server.switch_model(body.sd_model_checkpoint, "sd_model_checkpoint")
        return {}

    @api.get("/progress")
    async def progress():
        state = server.batcher.state()
        return {"progress": round(state["progress"], 4), "eta_relative": round(state["eta"], 3),
                "state": {"skipped": False, "interrupted": False, "stopping_generation": False,
                          "job": state["stage"] if state["running"] else "", "job_count": state["jobs"],
                          "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "job_no": 0,
                          "sampling_step": state["step"], "sampling_steps": state["steps"]},
                "current_image": None, "textinfo": None}

    @api.post("/interrupt")
    async def interrupt():
        server.interrupt(ORIGIN)
        return {}

    @api.post("/png-info")
    async def png_info(body: ImageBody):
        _, raw = interrogate.decode_image("image", body.image)
        return await run_in_threadpool(read_png_info, raw)

    @api.post("/interrogate")
    async def interrogate_route(body: ImageBody):
        if (body.model or "clip") != "clip":
            raise FieldError("model", f"interrogate model {body.model!r} is not available; accepted: clip (the "
                                      "served model's own CLIP pair)")
        image, _ = interrogate.decode_image("image", body.image)
        return {"caption": await server.on_worker(lambda pipe: interrogate.caption(pipe, image))}

    return api


def check(pipe, server, body: Txt2Img) -> generation.Spec:
    if body.enable_hr:
        raise FieldError("enable_hr", "enable_hr (hires fix) is not supported; send enable_hr: false")
    overrides = body.override_settings or {}
    wanted = overrides.get("sd_model_checkpoint")
    if wanted is not None and str(wanted).split(" [")[0] != pipe.model.name:
        raise FieldError("override_settings.sd_model_checkpoint",
                         f"override_settings.sd_model_checkpoint {wanted!r} is not the loaded model "
                         f"{pipe.model.name!r}; switch models with POST /sdapi/v1/options first")
    generation.schedule("scheduler", body.scheduler)
    batch_size = generation.whole("batch_size", 1 if body.batch_size is None else body.batch_size, 1,
                                  server.limits.max_images)
    n_iter = generation.whole("n_iter", 1 if body.n_iter is None else body.n_iter, 1, server.limits.max_images)
    if batch_size * n_iter > server.limits.max_images:
        raise FieldError("batch_size", f"batch_size x n_iter is {batch_size * n_iter} images; this server makes at "
                                       f"most {server.limits.max_images} per request")
    sampler = body.sampler_name or body.sampler_index
    return generation.spec(pipe, server.limits, prompt=body.prompt, negative=body.negative_prompt,
                           seed_value=body.seed, prior_seed_value=body.prior_seed, count=batch_size * n_iter,
                           steps=body.steps, guidance=body.cfg_scale, sampler=sampler, prior_steps=body.prior_steps,
                           prior_guidance=body.prior_cfg_scale, width=body.width, height=body.height, fields=FIELDS)


def info(pipe, spec: generation.Spec, result) -> dict:
    """A1111's `info`: the first image's values and every image's (all_*), plus our prior's."""
    records = result.records
    first, decoder, prior = records[0], records[0].decoder, records[0].prior
    return {
        "prompt": first.prompt, "all_prompts": [r.prompt for r in records],
        "negative_prompt": first.negative_prompt, "all_negative_prompts": [r.negative_prompt for r in records],
        "seed": first.seed, "all_seeds": [r.seed for r in records],
        "subseed": first.seed, "all_subseeds": [r.seed for r in records], "subseed_strength": 0,
        "width": decoder.width, "height": decoder.height, "sampler_name": SAMPLER_NAMES[decoder.scheduler],
        "scheduler": "automatic", "cfg_scale": decoder.guidance, "steps": decoder.steps,
        "batch_size": len(records), "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": first.model, "sd_model_hash": first.model_hash, "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": None,
        "extra_generation_params": {"Prior steps": prior.steps, "Prior CFG scale": prior.guidance,
                                    "Prior seed": first.prior_seed},
        "index_of_first_image": 0, "infotexts": [r.to_infotext() for r in records], "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1, "is_using_inpainting_conditioning": False,
        "version": f"imagegen {__version__}",
        "prior_seed": first.prior_seed, "all_prior_seeds": [r.prior_seed for r in records],
        "prior_steps": prior.steps, "prior_cfg_scale": prior.guidance, "prior_sampler_name": SAMPLER_NAMES.get(
            prior.scheduler, prior.scheduler),
    }


def read_png_info(raw: bytes) -> dict:
    """A1111's png-info: the `parameters` text, the other text chunks (our record among them), and the parameters
    parsed as A1111 parses them (Prompt, Negative prompt, Size-1/Size-2, ...)."""
    from ..png import INFOTEXT_CHUNK, read_text_chunks

    chunks = read_text_chunks(io.BytesIO(raw))
    text = chunks.get(INFOTEXT_CHUNK, "")
    return {"info": text, "items": {k: v for k, v in chunks.items() if k != INFOTEXT_CHUNK},
            "parameters": parse_infotext(text) if text else {}}


def parse_infotext(text: str) -> dict:
    """AUTOMATIC1111's reading of an infotext: the prompt lines, `Negative prompt:`, and the last line's
    `Key: value` pairs (Size split into Size-1 and Size-2); a last line that is not parameters is prompt."""
    head, _, last = text.strip().rpartition("\n")
    try:
        params = parse_params_line(last)
    except UserError:
        params, head = {}, text.strip()
    if not head and params and len(params) < 3:  # a one-line prompt that happens to hold a colon
        params, head = {}, last
    lines = head.split("\n")
    at = next((i for i, line in enumerate(lines) if line.startswith(NEGATIVE_PREFIX)), len(lines))
    negative = "\n".join([line.removeprefix(NEGATIVE_PREFIX) for line in lines[at:at + 1]] + lines[at + 1:])
    result = {"Prompt": "\n".join(lines[:at]), "Negative prompt": negative}
    for key, value in params.items():
        w, sep, h = value.partition("x")
        if key.endswith("Size") and sep and w.isdigit() and h.isdigit():
            result[f"{key}-1"], result[f"{key}-2"] = w, h
        else:
            result[key] = value
    return result
