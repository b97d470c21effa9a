"""A batch run from job file to summary line: the options (declared once, also the command's flags), the job list
and its plan checked before any model is loaded, the output folder readied (or resumed) by the main process, the
pending batches rendered by the engine, the manifest parts merged. No torch or ray at import time.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..options import option
from .output import FORMATS

ENGINES = ("auto", "local", "accelerate", "ray")
DEFAULT_BATCH_SIZE = 16  # images per pipeline call: a throughput tool (generate --prompts-file: 8)


@dataclass(frozen=True)
class BatchOptions:
    jobs: str = option(help="the job list: a .txt file (one prompt a line) or a .jsonl file (one JSON object a "
                            "line: prompt, negative_prompt, seed, prior_seed, n, steps, guidance, size, sampler, "
                            "lora, id, ...)",
                       positional=True, metavar="JOBS")
    out: str = option(help="output folder: the images (or shards), manifest.jsonl, errors.jsonl; run the same "
                           "command again to continue an interrupted run", metavar="DIR")
    format: str = option("png", f"{' or '.join(FORMATS)} (.tar shards of key.png + key.json; default %(default)s)")
    seed: int = option(0, "a job without a seed draws SEED + its id (default %(default)s)")
    batch_size: int = option(DEFAULT_BATCH_SIZE, "images per pipeline call (default %(default)s)", metavar="N")
    skip_bad: bool = option(False, "skip bad job lines (listed in errors.jsonl) instead of stopping before any work")
    engine: str = option("auto", "local, accelerate or ray (default %(default)s: accelerate under `accelerate "
                                 "launch`, else local)")
    address: str | None = option(None, "Ray cluster to connect to (default: $RAY_ADDRESS, or a cluster started on "
                                       "this machine, else a new local instance)", metavar="ADDR")
    num_gpus_per_worker: float = option(0.0, "GPUs per Ray worker (default %(default)s: CPU workers)", metavar="G")
    workers: int | None = option(None, "Ray workers, each loading the pipeline once (default: one per G GPUs, else "
                                       "one per free CPU)", metavar="W")
    threads: int | None = option(None, "torch CPU threads per process or worker (default: this machine's cores shared "
                                       "by the processes on it; Ray workers 1); CPU pixels depend on it, so give "
                                       "the same T when comparing engines", metavar="T")
    shard_size: int = option(1000, "images per webdataset shard (default %(default)s)", metavar="N")
    progress: bool = True  # the tqdm bar
    model: str = "shapes"
    device: str | None = None  # default: cpu (accelerate: each process's own device; Ray: cuda with G > 0)
    dtype: str = "auto"
    attention: str = "auto"


@dataclass(frozen=True)
class Summary:
    jobs: int
    images: int  # images of the list
    done: int  # of them in the manifest now
    new: int  # made by this run
    failures: int  # jobs left without all their images
    bad_lines: int
    seconds: float
    out: str

    def line(self) -> str:
        rate = self.new / self.seconds if self.seconds > 0 else 0.0
        skipped = f" ({self.bad_lines} bad lines skipped)" if self.bad_lines else ""
        return (f"batch: {self.jobs} jobs{skipped}, {self.done} of {self.images} images ({self.new} new), "
                f"{self.failures} failures, {rate:.2f} images/s in {self.seconds:.1f} s -> "
                f"{os.path.join(self.out, 'manifest.jsonl')}")


def choose_engine(options: BatchOptions) -> str:
    if options.engine not in ENGINES:
        raise UserError(f"unknown --engine {options.engine!r}; choose one of: {', '.join(ENGINES)}")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if options.engine == "ray" and distributed:
        raise UserError("--engine ray runs from one driver process; start it without accelerate launch")
    if options.engine == "auto":
        return "accelerate" if distributed else "local"
    return options.engine


def default_threads(engine: str) -> int:
    """Torch threads per process when --threads is not given: the cores of this machine shared by the processes an
    accelerate launch starts on it (a single process: torch's own default, as `imagegen generate` uses); a Ray worker
    holds one CPU of the cluster, so one."""
    if engine == "ray":
        return 1
    if engine == "accelerate":
        return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    import torch

    return torch.get_num_threads()


def check_numbers(options: BatchOptions) -> None:
    threads = 1 if options.threads is None else options.threads  # None: the default, chosen per engine
    for flag, value in (("--batch-size", options.batch_size), ("--threads", threads),
                        ("--shard-size", options.shard_size), ("--workers", options.workers or 1)):
        if value < 1:
            raise UserError(f"{flag} must be a whole number >= 1, got {value}")
    if options.num_gpus_per_worker < 0:
        raise UserError(f"--num-gpus-per-worker must be >= 0, got {options.num_gpus_per_worker:g}")


def run_batch(options: BatchOptions, settings) -> Summary | None:
    """Render every job of options.jobs not yet in the manifest. -> the summary (None on a process that is not the
    main one of an accelerate run)."""
    from ..png import check_writable_folder
    from ..presets import find_preset
    from ..settings import Limits
    from .jobs import plan, plan_digest, read_jobs
    from .output import Folder

    check_numbers(options)
    engine = choose_engine(options)
    options = dataclasses.replace(options, threads=options.threads or default_threads(engine))
    model = str(Path(options.model).resolve()) if Path(options.model).exists() else options.model  # for every worker
    preset = find_preset(model)
    job_list = read_jobs(options.jobs, settings, options.seed, preset, skip_bad=options.skip_bad)
    batches = plan(job_list.jobs, options.batch_size, Limits.for_model(preset.decoder_defaults))
    folder = Folder(options.out, options.format)
    state = None
    if engine == "accelerate":
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # cpu: gloo processes, as accelerate's --cpu
    is_main = state is None or state.is_main_process
    if is_main:
        check_writable_folder(options.out)
        from .. import __version__

        folder.start({"plan": plan_digest(batches), "model": model, "format": options.format,
                      "jobs": os.path.abspath(options.jobs), "images": sum(b.images for b in batches),
                      "batches": len(batches), "batch_size": options.batch_size, "seed": options.seed,
                      "threads": options.threads, "version": __version__}, job_list.bad)
    if state is not None:
        state.wait_for_everyone()  # the folder is ready (resumed) before any process reads it

    done = folder.done()
    pending = [b for b in batches if any((job.id, k) not in done for job, k in b.rows())]
    total = sum(b.images for b in batches)
    from .engines import Progress

    progress = Progress(total, sum(1 for b in batches for job, k in b.rows() if (job.id, k) in done),
                        enabled=is_main and options.progress)
    renderer_args = dict(model=model, device=options.device, dtype=options.dtype, attention=options.attention,
                         threads=options.threads)
    try:
        if not pending:
            pass  # every image is in the manifest: no model to load
        elif engine == "local":
            from .engines import run_local

            run_local(pending, folder, done, progress, dict(renderer_args, device=options.device or "cpu"),
                      options.shard_size)
        elif engine == "accelerate":
            from .engines import run_accelerate

            run_accelerate(state, pending, folder, done, progress, renderer_args, options.shard_size)
        else:
            from .ray_engine import run_ray

            run_ray(pending, folder, done, progress, renderer_args, options.shard_size, address=options.address,
                    workers=options.workers, gpus_per_worker=options.num_gpus_per_worker)
    finally:
        progress.close()
    if not is_main:
        return None
    entries = folder.merge_parts()
    have = {(e["id"], e["index"]) for e in entries}
    failures = sum(1 for job in job_list.jobs if any((job.id, k) not in have for k in range(job.n)))
    return Summary(jobs=len(job_list.jobs), images=total, done=len(have), new=len(have) - len(done), failures=failures,
                   bad_lines=len(job_list.bad), seconds=progress.seconds, out=options.out)
