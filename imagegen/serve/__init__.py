"""`imagegen serve`: one warm process that AUTOMATIC1111 and OpenAI clients, and a browser, talk to.

    options      ServeOptions: every option of the command, declared once (no FastAPI here)
    batcher      the request queue: one worker thread owns the pipeline; concurrent compatible requests share calls
    generation   checking a request field by field; adapters by name only; A1111 sampler names
    state        the running server: batcher, limits, model switching, saving to --outputs, kept images
    app          the FastAPI app: body limit, authentication, errors in each API's shape, /health; `run` (uvicorn)
    a1111        /sdapi/v1: txt2img, sd-models, samplers, schedulers, loras, options, progress, png-info, interrupt,
                 interrogate
    openai_api   /v1: images/generations, models
    interrogate  captions and zero-shot probabilities with the model's own CLIP pair
    ui           the Gradio web UI at /ui

The library never imports this package; FastAPI, uvicorn and Gradio come with the `serve` extra.
"""
