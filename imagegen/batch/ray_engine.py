"""The Ray engine: the planned batches as a Ray Data dataset (one row per batch), `map_batches` with `RenderActor` (an
actor pool, the pipeline loaded once per actor), and the driver writing what comes back — so the workers of a cluster
need no shared file system, and the output folder, manifest and resume are the same as on the other engines.

`ray.init(address=...)` without an address connects to RAY_ADDRESS or a cluster started on this machine, else starts
a local instance (stopped again at the end); a driver that already called ray.init keeps its instance. On a small
machine the actors get fractional CPUs so that one stays free for Ray Data's own tasks: with every CPU held by an
actor, the read tasks starve and the run stalls.
"""
from __future__ import annotations

import logging

from ..errors import UserError
from .jobs import Batch

KEEP_FREE_CPUS = 0.5  # left to Ray Data's read tasks and the driver


class RenderActor:
    """map_batches' callable class: rows of planned batches (JSON) -> one row per image (or per failed batch)."""

    def __init__(self, renderer_args: dict):
        from .engines import Renderer

        self.renderer = Renderer(**renderer_args)

    def __call__(self, rows: dict) -> dict:
        import numpy as np

        out = {"batch": [], "id": [], "index": [], "png": [], "record": [], "error": []}
        for text in rows["batch"]:
            batch = Batch.from_json(str(text))
            try:
                images = self.renderer(batch)
            except UserError as err:
                images, error = [(-1, -1, b"", None)], str(err)
            else:
                error = ""
            for job_id, index, data, record in images:
                values = (batch.number, job_id, index, data, record.to_json() if record else "", error)
                for key, value in zip(out, values):
                    out[key].append(value)
        return {key: np.array(values, dtype=object if key in ("png", "record", "error") else np.int64)
                for key, values in out.items()}


def worker_resources(cpus: float, gpus: float, workers: int | None, gpus_per_worker: float, threads: int):
    """(workers, CPUs per worker): one per G GPUs, or one per free CPU; fractional CPUs when they would not fit."""
    if gpus_per_worker > 0:
        if gpus < gpus_per_worker:
            raise UserError(f"--num-gpus-per-worker {gpus_per_worker:g} asked for, but the Ray cluster has "
                            f"{gpus:g} GPUs")
        workers = workers or max(1, int(gpus // gpus_per_worker))
        if workers * gpus_per_worker > gpus:  # the pool would wait for GPUs that never come
            raise UserError(f"--workers {workers} x --num-gpus-per-worker {gpus_per_worker:g} is more than the "
                            f"Ray cluster's {gpus:g} GPUs")
        per_worker = 1.0
    else:
        per_worker = float(threads)
        workers = workers or max(1, int((cpus - KEEP_FREE_CPUS) // per_worker))
    if workers * per_worker > cpus - KEEP_FREE_CPUS:
        per_worker = max(0.01, (cpus - KEEP_FREE_CPUS) / workers)
    return workers, per_worker


def run_ray(batches: list, folder, done: dict, progress, renderer_args: dict, shard_size: int, *, address=None,
            workers=None, gpus_per_worker: float = 0.0) -> None:
    try:
        import ray
        import ray.data
    except ImportError:
        raise UserError("--engine ray needs Ray Data: pip install 'imagegen[ray]'") from None

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False)
    try:
        resources = ray.cluster_resources()
        count, cpus = worker_resources(resources.get("CPU", 1.0), resources.get("GPU", 0.0), workers, gpus_per_worker,
                                       renderer_args.get("threads") or 1)
        args = dict(renderer_args, device="cuda" if gpus_per_worker > 0 else renderer_args.get("device") or "cpu")
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours covers the whole list
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # not every execution's plan
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
        dataset = ray.data.from_items([{"batch": batch.to_json()} for batch in batches])
        rendered = dataset.map_batches(RenderActor, fn_constructor_kwargs={"renderer_args": args}, batch_size=1,
                                       compute=ray.data.ActorPoolStrategy(size=count), num_cpus=cpus,
                                       num_gpus=gpus_per_worker or None, batch_format="numpy")
        by_number = {batch.number: batch for batch in batches}
        writer = folder.writer(shard_size=shard_size)
        try:
            for block in rendered.iter_batches(batch_size=None, batch_format="numpy"):
                write_block(block, by_number, writer, folder, done, progress)
        finally:
            writer.close()
    finally:
        if started:
            ray.shutdown()


def write_block(block: dict, by_number: dict, writer, folder, done: dict, progress) -> None:
    """The rows the actors sent back, batch by batch: failures logged, images not done yet written."""
    from ..record import GenerationRecord

    images = {}
    for number, job_id, index, data, record, error in zip(*(block[key] for key in
                                                           ("batch", "id", "index", "png", "record", "error"))):
        if error:
            folder.log_failure(by_number[int(number)], str(error))
        elif (int(job_id), int(index)) not in done:
            images.setdefault(int(number), []).append(
                (int(job_id), int(index), bytes(data), GenerationRecord.from_json(str(record))))
    for number in sorted(images):
        writer.write(images[number])
        progress.update(len(images[number]))
