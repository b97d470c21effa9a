"""The web UI at /ui: a Gradio app on the same server, its requests batched with the API's.

Generate (prompt, negative prompt, seed, prior and decoder steps and guidance, size, sampler, adapters with
weights, number of images -> a gallery and each image's infotext, with live progress and a Stop button), Classify
(an image and labels -> zero-shot probabilities with the model's own CLIP pair, or a caption) and PNG info (what an
imagegen or AUTOMATIC1111 PNG says it was made from). Gradio >= 6.17 serves its own fonts, so the page works
offline; analytics are off. The elem_ids are what the browser test drives.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported

import atexit
import json
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import Interrupted, UserError
from . import generation, interrogate
from .a1111 import read_png_info
from .batcher import Busy
from .generation import FieldError

ORIGIN = "ui"
POLL_S = 0.25
FILE_AGE_S = 3600  # the gallery's files are deleted after an hour
FIELDS = {"prompt": "Prompt", "negative": "Negative prompt", "seed": "Seed", "prior_seed": "Seed",
          "count": "Images", "steps": "Steps", "guidance": "Guidance", "sampler": "Sampler",
          "prior_steps": "Prior steps", "prior_guidance": "Prior guidance", "width": "Width", "height": "Height"}


def mount(app, server, credentials: list[tuple[str, str]]) -> None:
    import gradio as gr

    folder = Path(tempfile.mkdtemp(prefix="imagegen-ui-"))
    atexit.register(shutil.rmtree, folder, True)
    blocks = build(server, folder)
    blocks.queue(default_concurrency_limit=server.options.max_batch)  # so that UI users share batches too
    gr.mount_gradio_app(app, blocks, path="/ui", auth=credentials or None, allowed_paths=[str(folder)],
                        ssr_mode=False, footer_links=["api"])


def _pipe(server):
    if not server.batcher.ready.wait(60):
        raise UserError("the model is still loading; try again shortly")
    if server.batcher.load_error:
        raise UserError(f"the model could not be loaded: {server.batcher.load_error}")
    return server.pipe


def _tags(adapters) -> str:
    """The adapter table's rows [name, weight] -> `<lora:name:weight>` tags (weight 0: not used)."""
    tags = []
    for row in adapters or []:
        if len(row) < 2 or row[0] in (None, ""):
            continue
        try:
            weight = float(row[1])
        except (TypeError, ValueError):
            raise FieldError("Adapters", f"the weight of adapter {row[0]!r} must be a number, got {row[1]!r}") from None
        if weight:
            tags.append(f"<lora:{row[0]}:{weight:g}>")
    return " ".join(tags)


def build(server, folder: Path):
    import gradio as gr

    from ..lora import files
    from ..presets import find_preset
    from ..record import SAMPLER_NAMES
    from ..settings import Limits

    preset = find_preset(server.options.model)
    prior, decoder = preset.prior_defaults, preset.decoder_defaults
    limits = Limits.for_model(decoder)
    adapters = [[name, 0.0] for name in sorted(files.available())]
    samplers = [name for name, _ in generation.sampler_choices()]

    def generate(prompt, negative, seed, steps, guidance, prior_steps, prior_guidance, width, height, sampler,
                 count, adapter_rows, progress=gr.Progress()):
        job = None
        try:
            pipe = _pipe(server)
            tags = _tags(adapter_rows.values.tolist() if hasattr(adapter_rows, "values") else adapter_rows)
            spec = generation.spec(
                pipe, server.limits, prompt=f"{prompt} {tags}".strip() if tags else prompt, negative=negative,
                seed_value=int(seed) if seed is not None else -1, prior_seed_value=None, count=int(count),
                steps=int(steps), guidance=guidance, sampler=sampler, prior_steps=int(prior_steps),
                prior_guidance=prior_guidance, width=int(width), height=int(height), fields=FIELDS)
            job = server.submit(spec, ORIGIN)
            while not job.future.done():
                progress(job.progress, desc="generating")
                yield gr.skip(), gr.skip(), f"{job.progress:.0%}"
                time.sleep(POLL_S)
            result = job.future.result()
        except Interrupted:
            yield gr.skip(), gr.skip(), "stopped"
            return
        except (UserError, Busy) as err:
            raise gr.Error(str(err)) from None
        finally:
            if job is not None and not job.future.done():
                job.cancel("stopped in the web UI")  # Stop, or the page was closed
        pngs = server.png_files(result)
        gallery = [(str(_write(folder, data)), f"seed {record.seed}") for data, record in zip(pngs, result.records)]
        infotexts = "\n\n".join(record.to_infotext() for record in result.records)
        yield gallery, infotexts, f"{len(gallery)} image{'s' * (len(gallery) != 1)}, seed {result.records[0].seed}"

    def classify(image, labels):
        if image is None:
            raise gr.Error("give an image")
        try:
            from ..classify.zeroshot import parse_labels

            names = parse_labels(labels or "")
            _pipe(server)
            return server.batcher.run_exclusive(lambda pipe: interrogate.classify(pipe, image, names)).result()
        except (UserError, Busy) as err:
            raise gr.Error(str(err)) from None

    def describe(image):
        if image is None:
            raise gr.Error("give an image")
        try:
            _pipe(server)
            return server.batcher.run_exclusive(lambda pipe: interrogate.caption(pipe, image)).result()
        except (UserError, Busy) as err:
            raise gr.Error(str(err)) from None

    def png_info(path):
        if not path:
            return "", {}
        try:
            found = read_png_info(Path(path).read_bytes())
        except UserError as err:
            raise gr.Error(str(err)) from None
        record = found["items"].get("imagegen")
        return found["info"] or "(no parameters text)", json.loads(record) if record else found["parameters"]

    with gr.Blocks(title="imagegen", analytics_enabled=False, delete_cache=(FILE_AGE_S, FILE_AGE_S)) as blocks:
        gr.Markdown(f"## imagegen — {preset.name}")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=3):
                    prompt = gr.Textbox("", label="Prompt", lines=2, elem_id="prompt", placeholder="a red circle")
                    negative = gr.Textbox("", label="Negative prompt", lines=1, elem_id="negative")
                    with gr.Row():
                        seed = gr.Number(label="Seed (-1: random)", value=-1, precision=0, elem_id="seed")
                        count = gr.Slider(1, min(server.limits.max_images, 16), value=1, step=1, label="Images",
                                          elem_id="count")
                        sampler = gr.Dropdown(samplers, value=SAMPLER_NAMES[decoder.scheduler], label="Sampler")
                    with gr.Row():
                        steps = gr.Slider(1, server.limits.max_steps, value=decoder.steps, step=1, label="Steps")
                        guidance = gr.Slider(0, generation.MAX_GUIDANCE, value=decoder.guidance, step=0.5,
                                             label="Guidance")
                    with gr.Row():
                        prior_steps = gr.Slider(2, server.limits.max_steps, value=prior.steps, step=1,
                                                label="Prior steps")
                        prior_guidance = gr.Slider(0, generation.MAX_GUIDANCE, value=prior.guidance, step=0.5,
                                                   label="Prior guidance")
                    with gr.Row():
                        width = gr.Slider(8, limits.max_width, value=decoder.width, step=8, label="Width")
                        height = gr.Slider(8, limits.max_height, value=decoder.height, step=8, label="Height")
                    adapter_table = gr.Dataframe(adapters, headers=["adapter", "weight"], datatype=["str", "number"],
                                                 label="LoRA adapters (weight 0: off)", type="array",
                                                 row_count=len(adapters), column_count=2, static_columns=[0],
                                                 interactive=True, visible=bool(adapters))
                    with gr.Row():
                        run = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop = gr.Button("Stop", elem_id="stop")
                with gr.Column(scale=4):
                    status = gr.Markdown(elem_id="status")
                    gallery = gr.Gallery(label="Images", columns=4, elem_id="gallery", format="png", height=360,
                                         object_fit="contain", preview=False, fit_columns=False,
                                         interactive=False)
                    infotext = gr.Textbox(label="Infotext", lines=6, elem_id="infotext", interactive=False)
            event = run.click(generate, [prompt, negative, seed, steps, guidance, prior_steps, prior_guidance, width,
                                         height, sampler, count, adapter_table], [gallery, infotext, status],
                              api_name="generate")
            stop.click(None, cancels=[event])
        with gr.Tab("Classify"):
            with gr.Row():
                image = gr.Image(type="pil", label="Image", elem_id="classify-image")
                with gr.Column():
                    labels = gr.Textbox(label="Labels, comma-separated", value="red circle, blue square, green star",
                                        elem_id="labels")
                    classify_button = gr.Button("Classify", variant="primary", elem_id="classify")
                    scores = gr.Label(label="Probabilities", num_top_classes=5)
                    describe_button = gr.Button("Describe", elem_id="describe")
                    caption = gr.Textbox(label="Caption", interactive=False)
            classify_button.click(classify, [image, labels], scores, api_name="classify")
            describe_button.click(describe, image, caption, api_name="describe")
        with gr.Tab("PNG info"):
            with gr.Row():
                upload = gr.File(label="PNG", file_types=[".png"], type="filepath", elem_id="png-file")
                with gr.Column():
                    parameters = gr.Textbox(label="Parameters", lines=4, interactive=False)
                    record = gr.JSON(label="imagegen record")
            upload.change(png_info, upload, [parameters, record], api_name="png_info")
    return blocks


def _write(folder: Path, data: bytes) -> Path:
    """A gallery file (the PNG with its metadata, as the API gives it); files older than an hour go."""
    cutoff = time.time() - FILE_AGE_S
    for old in folder.glob("*.png"):
        if old.stat().st_mtime < cutoff:
            old.unlink(missing_ok=True)
    path = folder / f"{secrets.token_hex(8)}.png"
    path.write_bytes(data)
    return path
