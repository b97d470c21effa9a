"""`imagegen batch JOBS --out DIR`: a job list of any size, resumable, on one process, on the processes of
`accelerate launch` (one per GPU of a node, or `--cpu` gloo processes), or on a Ray cluster (`--engine ray`).

Its flags are the fields of BatchOptions (imagegen.batch.run) and JobSettings (imagegen.batch.jobs: the settings of
every job that gives none), declared there once. `accelerate launch --cpu --num_processes N` starts one process
(huggingface/accelerate#2741); that one starts the N workers, as train-lora's does (imagegen.launch).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from ..errors import UserError
from ..options import add_arguments, from_arguments
from .registry import command


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    from ..batch.jobs import JobSettings
    from ..batch.run import BatchOptions
    from .generate import add_model_arguments

    add_arguments(p, BatchOptions)
    add_arguments(p, JobSettings)
    add_model_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the summary line still comes)")


@command("batch", "render a job list (.txt or .jsonl) resumably: one process, accelerate launch, or --engine ray",
         add_batch_arguments)
def run_batch_command(args) -> int:
    from ..batch.jobs import JobSettings
    from ..batch.run import BatchOptions, run_batch
    from ..presets import DEFAULT_PRESET

    options = dataclasses.replace(from_arguments(BatchOptions, args), model=args.model or DEFAULT_PRESET,
                                  device=args.device, dtype=args.dtype or "auto", attention=args.attention,
                                  progress=not args.no_progress)
    settings = from_arguments(JobSettings, args)
    from ..launch import lost_processes, relaunch

    processes = lost_processes()
    if processes > 1:  # the one process `accelerate launch --cpu` started: it starts the workers
        return relaunch(processes, args.argv)
    rank = int(os.environ.get("RANK", "0"))
    if rank:  # the main process speaks for all
        logging.getLogger("imagegen").setLevel(logging.ERROR)
    try:
        summary = run_batch(options, settings)
    except UserError:
        if rank:
            return 2  # the main process reports it
        raise
    if summary is None:
        return 0
    print(summary.line(), flush=True)
    if summary.failures:
        jobs = "1 job" if summary.failures == 1 else f"{summary.failures} jobs"
        print(f"imagegen: {jobs} failed (see {os.path.join(options.out, 'errors.jsonl')}); run the same command "
              "again to retry", file=sys.stderr)
        return 1
    return 0
