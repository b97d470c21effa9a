"""LoRA adapter training (`imagegen train-lora`): the run's options (`options`, also the command's flags), the
captioned-image data (`data`), the training loop and losses (`train`), checkpoints and resume (`checkpoints`), the
adapter file and validation grids (`outputs`), and the CPU data-parallel start under `accelerate launch` (`launch`).

    from imagegen.train.lora.options import LoraOptions
    from imagegen.train.lora.train import train_lora
"""
