"""The running server's state, shared by its routes and its web UI: the batcher (and through it the pipeline), the
limits, the models it can switch to, the images it keeps for OpenAI `url` answers, and saving to --outputs.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import OrderedDict

from .batcher import Batcher, Busy, Job, JobResult
from .generation import FieldError, Limits

log = logging.getLogger("imagegen.serve")
READY_TIMEOUT_S = 300  # how long a request waits for the model to finish loading
READY_POLL_S = 0.1
DISCONNECT_POLL_S = 0.25
KEPT_IMAGES = 512  # images kept for `url` answers (64x64 PNGs: a few MB)
KEPT_IMAGE_SECONDS = 3600


class Unavailable(Exception):
    """The model is not loaded (still loading past the wait, or it failed) or the server is stopping: 503."""


class ClientGone(Exception):
    """The client disconnected while its images were being made; nobody is there to answer."""


class Server:
    def __init__(self, options, loader=None):
        from ..loading import load_pipeline

        self.options = options
        self.loader = loader or (lambda ref: load_pipeline(ref, device=options.device))
        self.model_ref = options.model
        self.limits = Limits(options.max_images, options.max_steps, options.max_pixels)
        self.batcher = Batcher(lambda: self.loader(self.model_ref), options.max_batch, options.max_wait_ms / 1000,
                               options.max_queue)
        self.started = time.time()
        self._kept: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._kept_lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._served: dict[str, str] = {}  # name -> ref of each model loaded so far

    # ---------------------------------------------------------------- the model
    @property
    def pipe(self):
        return self.batcher.pipe

    async def ready(self):
        """The pipeline, once loaded; Unavailable if it failed or takes too long."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.batcher.ready.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(READY_POLL_S)
        return self.ready_now()

    def ready_now(self):
        if not self.batcher.ready.is_set():
            raise Unavailable("the model is still loading; try again shortly (GET /health says when it is ready)")
        if self.batcher.load_error is not None:
            raise Unavailable(f"the model could not be loaded: {self.batcher.load_error}")
        return self.batcher.pipe

    def model_choices(self) -> dict[str, str]:
        """Model name -> what loads it: every preset whose weights are here, and the models served so far."""
        from ..presets import list_presets

        if self.pipe is not None:
            self._served.setdefault(self.pipe.model.name, self.model_ref)
        return {**{p.name: p.name for p in list_presets() if p.availability() != "missing"}, **self._served}

    async def switch_model(self, name: str, field: str) -> None:
        """Load another model (in queue order, on the worker thread), as AUTOMATIC1111's sd_model_checkpoint."""
        pipe = await self.ready()
        choices = self.model_choices()
        title = name.split(" [")[0] if isinstance(name, str) else name  # A1111 titles: "name [hash]"
        if title not in choices:
            raise FieldError(field, f"unknown model {name!r} in {field}; available: {', '.join(sorted(choices))}")
        if title == pipe.model.name:
            return
        ref = choices[title]

        def load(_old):  # a model that fails to load leaves the old one served
            new = self.loader(ref)
            self.batcher.pipe, self.model_ref = new, ref
            self._served.setdefault(new.model.name, ref)
            return new

        await asyncio.wrap_future(self.batcher.run_exclusive(load))

    async def on_worker(self, run):
        """run(pipe) on the worker thread, between pipeline calls."""
        await self.ready()
        try:
            future = self.batcher.run_exclusive(run)
        except Busy as err:
            raise Unavailable(str(err)) from None
        return await asyncio.wrap_future(future)

    # ---------------------------------------------------------------- generating
    def submit(self, spec, origin: str) -> Job:
        return self.batcher.submit(spec.key, list(spec.rows), origin)

    async def generate(self, spec, origin: str, request=None) -> JobResult:
        """The images of a checked request. A client that disconnects cancels its job (not its companions');
        Interrupted when the job was interrupted."""
        job = self.submit(spec, origin)
        future = asyncio.wrap_future(job.future)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "exception was never retrieved"
        while True:
            done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
            if done:
                return future.result()
            if request is not None and await request.is_disconnected():
                job.cancel("the client disconnected")
                raise ClientGone()

    def interrupt(self, origin: str) -> int:
        """Interrupt the running jobs that came through `origin`; -> how many."""
        jobs = [job for job in self.batcher.running_jobs() if job.origin == origin]
        for job in jobs:
            job.cancel("interrupted")
        return len(jobs)

    def png_files(self, result: JobResult) -> list[bytes]:
        """Each image as a PNG with its infotext and record; saved to --outputs too (atomically, never over a
        file). Runs in a worker thread of the web server, not on the pipeline's."""
        from ..png import png_bytes, save_png

        folder = self.options.outputs_folder
        if folder is not None:
            with self._save_lock:  # one numbering: concurrent requests do not both take the next number
                for image, record in zip(result.images, result.records):
                    try:
                        save_png(image, record, folder)
                    except OSError as err:  # a full disk must not cost the client its images
                        log.error("cannot save an image to %s: %s", folder, err)
        return [png_bytes(image, record) for image, record in zip(result.images, result.records)]

    # ---------------------------------------------------------------- images kept for `url` answers
    def keep(self, data: bytes) -> str:
        token = secrets.token_urlsafe(18)
        now = time.monotonic()
        with self._kept_lock:
            self._kept[token] = (now, data)
            while len(self._kept) > KEPT_IMAGES or (self._kept and
                                                    next(iter(self._kept.values()))[0] < now - KEPT_IMAGE_SECONDS):
                self._kept.popitem(last=False)
        return token

    def kept(self, token: str) -> bytes | None:
        with self._kept_lock:
            entry = self._kept.get(token)
        return entry[1] if entry else None

