"""OpenAI's images API (/v1), as the `openai` client and the apps built on it call it.

`POST /v1/images/generations` takes model, prompt, n, size ("WxH" or "auto") and response_format (`b64_json`, or
`url`: served by this server for an hour); quality, style, user and the like are accepted and ignored. Our own
settings come as extra body fields (the client's `extra_body`), named as on the AUTOMATIC1111 route: seed,
negative_prompt, steps, cfg_scale, sampler_name, prior_steps, prior_cfg_scale, prior_seed. Errors are OpenAI's
{"error": {...}}, 400 for bad input (the client raises BadRequestError and does not retry).
"""
from __future__ import annotations

import base64
import re
import time

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from ..errors import Interrupted
from . import generation
from .generation import FieldError

ORIGIN = "openai"
FIELDS = {"prompt": "prompt", "negative": "negative_prompt", "seed": "seed", "prior_seed": "prior_seed",
          "count": "n", "steps": "steps", "guidance": "cfg_scale", "sampler": "sampler_name",
          "prior_steps": "prior_steps", "prior_guidance": "prior_cfg_scale", "width": "size", "height": "size"}
FORMATS = ("b64_json", "url")
_SIZE = re.compile(r"(\d{1,6})x(\d{1,6})")


class Generation(BaseModel):
    model_config = ConfigDict(extra="allow")  # quality, style, user, background, moderation: accepted, ignored

    prompt: str
    model: str | None = None
    n: int | None = 1
    size: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    seed: int | None = None
    negative_prompt: str | None = ""
    steps: int | None = None
    cfg_scale: float | None = None
    sampler_name: str | None = None
    prior_steps: int | None = None
    prior_cfg_scale: float | None = None
    prior_seed: int | None = None


def router(server, auth) -> APIRouter:
    api = APIRouter(prefix="/v1", dependencies=[auth], tags=["OpenAI"])

    @api.post("/images/generations")
    async def generations(body: Generation, request: Request):
        pipe = await server.ready()
        checked, response_format = check(pipe, server, body)
        try:
            result = await server.generate(checked, ORIGIN, request)
        except Interrupted as err:
            raise FieldError(None, f"the generation was interrupted ({err})") from None
        files = await run_in_threadpool(server.png_files, result)
        if response_format == "url":
            base = str(request.base_url).rstrip("/")
            data = [{"url": f"{base}/files/{server.keep(png)}.png", "revised_prompt": checked.prompt} for png in files]
        else:
            data = [{"b64_json": base64.b64encode(png).decode(), "revised_prompt": checked.prompt} for png in files]
        decoder = checked.key.decoder
        return {"created": int(time.time()), "data": data, "output_format": "png",
                "size": f"{decoder.width}x{decoder.height}"}

    @api.get("/models")
    async def models():
        pipe = await server.ready()
        return {"object": "list", "data": [model_object(pipe, server)]}

    @api.get("/models/{model_id}")
    async def model(model_id: str):
        pipe = await server.ready()
        if model_id != pipe.model.name:
            raise HTTPException(404, f"The model {model_id!r} does not exist; this server serves {pipe.model.name!r}")
        return model_object(pipe, server)

    return api


def model_object(pipe, server) -> dict:
    return {"id": pipe.model.name, "object": "model", "created": int(server.started), "owned_by": "imagegen"}


def check(pipe, server, body: Generation) -> tuple[generation.Spec, str]:
    if body.model is not None and body.model != pipe.model.name:
        raise FieldError("model", f"model {body.model!r} is not served here; this server serves {pipe.model.name!r}")
    response_format = body.response_format or "url"
    if response_format not in FORMATS:
        raise FieldError("response_format", f"response_format must be one of {', '.join(FORMATS)}, got "
                                            f"{body.response_format!r}")
    if body.output_format not in (None, "png"):
        raise FieldError("output_format", f"output_format must be png, got {body.output_format!r}")
    width = height = None
    if body.size not in (None, "auto"):
        match = _SIZE.fullmatch(body.size)
        if not match:
            raise FieldError("size", f"size must be 'WIDTHxHEIGHT' (e.g. '64x64') or 'auto', got {body.size!r}")
        width, height = int(match.group(1)), int(match.group(2))
    checked = generation.spec(pipe, server.limits, prompt=body.prompt, negative=body.negative_prompt,
                              seed_value=body.seed, prior_seed_value=body.prior_seed,
                              count=1 if body.n is None else body.n, steps=body.steps, guidance=body.cfg_scale,
                              sampler=body.sampler_name, prior_steps=body.prior_steps,
                              prior_guidance=body.prior_cfg_scale, width=width, height=height, fields=FIELDS)
    return checked, response_format
