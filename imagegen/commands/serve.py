"""`imagegen serve`: the AUTOMATIC1111 and OpenAI HTTP APIs and a web UI in one warm process (imagegen.serve).
FastAPI, uvicorn and Gradio are imported only when the server starts, so `imagegen --help` stays fast."""
from __future__ import annotations

import argparse

from ..errors import UserError
from ..options import add_arguments, from_arguments
from ..serve.options import ServeOptions
from .registry import command


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    add_arguments(p, ServeOptions)


@command("serve", "serve AUTOMATIC1111- and OpenAI-compatible HTTP APIs and a web UI, batching concurrent requests",
         add_serve_arguments)
def run_serve(args) -> int:
    options = from_arguments(ServeOptions, args)
    options.validate()
    try:
        from ..serve.app import run
    except ImportError as err:
        raise UserError(f"imagegen serve needs the 'serve' extra ({err.name} is missing): pip install "
                        "'imagegen[serve]'") from None
    return run(options)
