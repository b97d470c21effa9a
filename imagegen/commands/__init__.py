"""The `imagegen` subcommands, one module per command and named after it (`train-lora` is `train_lora.py`), plus
`registry` (the @command decorator) and `clip_options` (the options classify and score share). Only argparse and
small modules load at start-up: torch and diffusers are imported inside the commands that use them."""
