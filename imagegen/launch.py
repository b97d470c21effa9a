"""`accelerate launch --num_processes N --cpu -m imagegen COMMAND ...` for the commands that run data-parallel on the
CPU (train-lora, batch).

accelerate 1.x starts a single process for that command unless an MPI hostfile is configured (huggingface/accelerate
#2741): its simple launcher runs the script once and forgets N. `lost_processes` notices that it is that one process
(ACCELERATE_USE_CPU set, no rank variables) and reads N from the launcher's command line; `relaunch` then starts N
workers with torch's elastic launcher - what `accelerate launch --multi_gpu` uses - which inherit ACCELERATE_USE_CPU,
so accelerate makes them one gloo process group.
"""
from __future__ import annotations

import os
from pathlib import Path


def lost_processes() -> int:
    """`accelerate launch --cpu --num_processes N` starts one process unless mpirun is configured
    (huggingface/accelerate#2741). In that process, return N (read from the launcher's command line); else 0."""
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes") or "MASTER_ADDR" not in env:
        return 0
    if any(k in env for k in ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")):
        return 0
    try:
        words = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return 0
    starts = [i + 1 for i, w in enumerate(words[:3]) if w == "launch" or w.endswith("accelerate-launch")]
    if not starts:
        return 0
    from accelerate.commands.launch import launch_command_parser

    try:
        launcher_args, _ = launch_command_parser().parse_known_args([w for w in words[starts[0]:] if w])
    except SystemExit:
        return 0
    return int(launcher_args.num_processes or 0)


def relaunch(processes: int, argv: list[str]) -> int:
    """Start `processes` workers `python -m imagegen *argv` (argv: a command line, e.g. `train-lora DATA ...` or
    `batch JOBS ...`) with torch's elastic
    launcher (what `accelerate launch --multi_gpu` uses); ACCELERATE_USE_CPU is inherited, so each becomes a gloo CPU
    process of one data-parallel run."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(["--nproc-per-node", str(processes), "--master-addr", os.environ["MASTER_ADDR"],
                       "--master-port", os.environ.get("MASTER_PORT", "29500"), "-m", "imagegen", *argv])
    try:
        run(args)
    except ChildFailedError as err:
        return max((f.exitcode for f in err.failures.values() if f.exitcode and f.exitcode > 0), default=1)
    except SignalException as err:  # Ctrl-C: the launcher passed it on; the workers saved a checkpoint and stopped
        return 128 + int(err.sigval)
    return 0
