"""`imagegen batch`: a job list of any size rendered resumably by one process, by the processes of `accelerate launch`,
or by a Ray Data actor pool. No torch or ray at import time.

    jobs.py       job lines -> typed Jobs (stable ids and seeds) -> the deterministic batch plan
    output.py     the output folder: image files or webdataset shards, manifest parts, merge, resume
    engines.py    rendering one planned batch; the local and accelerate engines; the progress bar
    ray_engine.py the same batches through Ray Data (`map_batches` with an actor class)
    run.py        the command's options and the run from job file to summary line

The plan is made from the whole job list before any work is split, so a job always lands in the same batch (the
same prompts, seeds and settings in the same rows) and gets the same pixels whichever engine renders it.
"""
