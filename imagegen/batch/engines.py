"""Rendering planned batches: `Renderer` (the pipeline, loaded once per process or actor, and one batch -> PNGs), the
local engine (one process) and the accelerate engine (`accelerate launch`: `PartialState().split_between_processes`
gives each process its share of the planned batches; each writes its own manifest part). The Ray engine is in
ray_engine.py. `Progress` is the one bar over the whole list, on the main process.
"""
from __future__ import annotations

import threading
import time

from ..errors import UserError
from .output import PART, PARTS


class Renderer:
    """The pipeline of one process (or Ray actor), and planned batches -> (job id, index, PNG bytes, record)."""

    def __init__(self, model: str, device: str = "cpu", dtype: str = "auto", attention: str = "auto", threads: int = 1):
        import torch

        from ..loading import load_pipeline

        self.threads_before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)  # CPU kernels round by thread count: the same everywhere, same pixels
        self.pipe = load_pipeline(model, device=device, dtype=dtype, attention=attention)

    def __call__(self, batch) -> list:
        from ..png import png_bytes

        result = self.pipe(**batch.call())
        return [(job.id, k, png_bytes(image, record), record)
                for (job, k), image, record in zip(batch.rows(), result.images, result.records)]

    def close(self) -> None:
        import torch

        torch.set_num_threads(self.threads_before)  # a caller's own work (a notebook, the tests) as before


def render_into(renderer, batch, writer, folder, done: dict, progress) -> None:
    """Render one batch and write the images not done yet; a bad input (UserError) fails its jobs, not the run."""
    try:
        images = renderer(batch)
    except UserError as err:
        folder.log_failure(batch, str(err))
        return
    images = [image for image in images if (image[0], image[1]) not in done]
    writer.write(images)
    progress.update(len(images))


def run_local(batches: list, folder, done: dict, progress, renderer_args: dict, shard_size: int) -> None:
    renderer = Renderer(**renderer_args)
    writer = folder.writer(shard_size=shard_size)
    try:
        for batch in batches:
            render_into(renderer, batch, writer, folder, done, progress)
    finally:
        writer.close()
        renderer.close()


def run_accelerate(state, batches: list, folder, done: dict, progress, renderer_args: dict, shard_size: int) -> None:
    """This process's share of the batches (whole planned batches, so the split changes no pixels), on its own device
    unless --device says otherwise; its manifest part is merged by the main process at the end."""
    own = "cpu" if state.device.type == "cpu" else f"{state.device.type}:{state.device.index or 0}"
    args = dict(renderer_args, device=renderer_args.get("device") or own)
    renderer = Renderer(**args)
    writer = folder.writer(PART.format(state.process_index), shard_size=shard_size)
    watch = PartWatcher(folder.path, progress) if state.is_main_process and state.num_processes > 1 else None
    try:
        with state.split_between_processes(batches) as mine:
            for batch in mine:
                render_into(renderer, batch, writer, folder, done, progress if watch is None else NO_PROGRESS)
    finally:
        writer.close()
    state.wait_for_everyone()
    if watch is not None:
        watch.stop()


class Progress:
    """A tqdm bar over every image of the list (images/s, ETA), starting at the images already done."""

    def __init__(self, total: int, done: int, enabled: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, unit="img", desc="batch", disable=not enabled, smoothing=0.3)
        self.new, self.started = 0, time.monotonic()

    def update(self, images: int) -> None:
        self.new += images
        self.bar.update(images)

    def close(self) -> None:
        self.bar.close()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


class NoProgress:
    def update(self, images: int) -> None:
        pass


NO_PROGRESS = NoProgress()


class PartWatcher:
    """On the main process of an accelerate run: moves the bar by the lines every process appends to its manifest
    part (Folder.start merged and removed the parts of earlier runs)."""

    def __init__(self, folder, progress, every: float = 0.5):
        self.folder, self.progress, self.every = folder, progress, every
        self.offsets = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.stopping.wait(self.every):
            self.count()
        self.count()

    def count(self) -> None:
        for path in self.folder.glob(PARTS):
            with open(path, "rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
            whole = data.rfind(b"\n") + 1
            self.offsets[path] = self.offsets.get(path, 0) + whole
            self.progress.update(data[:whole].count(b"\n"))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
