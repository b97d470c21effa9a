"""The options of `imagegen train-base`, declared once: the fields of `TrainBaseOptions` are also the command's
flags (imagegen.options). Everything else about a run is in its recipe (configs/train/*.toml, read by
imagegen.train.base.config).
"""
from __future__ import annotations

from dataclasses import dataclass

from ...options import option


@dataclass
class TrainBaseOptions:
    config: str = option("configs/train/shapes.toml", "training recipe (TOML; default %(default)s)")
    out: str | None = option(None, "model folder to write, e.g. imagegen/weights/shapes (prior/ and decoder/); with "
                                   "--smoke: <run folder>/model by default")
    resume: bool = option(False, "continue the run: skip finished stages, resume the current one from its checkpoint")
    smoke: bool = option(False, "~5 steps per stage on small batches, in <name>-smoke: an end-to-end check of the code")
