# The two set-up commands of README.md. Each creates .venv when it is missing and installs the project into it.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test samples shapes-from-scratch

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/pip || $(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: generate with the embedded default model (offline) into outputs/
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/imagegen "a red circle" -n 4 --seed 0 --out outputs

## test: run the test suite offline
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q

## samples: regenerate samples/shapes-grid.png (default model) and samples/adapters-grid.png (example adapters)
samples: $(STAMP)
	rm -f samples/shapes-grid.png samples/adapters-grid.png
	HF_HUB_OFFLINE=1 $(VENV)/bin/imagegen grid --prompts-file samples/prompts.txt --seeds 6 --seed 0 --out samples/shapes-grid.png
	HF_HUB_OFFLINE=1 $(VENV)/bin/imagegen grid --prompts-file samples/adapter-prompts.txt --seeds 6 --seed 0 --out samples/adapters-grid.png

## shapes-from-scratch: train the default model's architecture from random weights (configs/train/shapes-scratch*.toml;
## about 4.8 h on 2 cores). Run it again to resume: each part continues from its checkpoints and skips finished stages.
shapes-from-scratch: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/imagegen train-base --config configs/train/shapes-scratch.toml --out runs/shapes-scratch/model --resume
	HF_HUB_OFFLINE=1 $(VENV)/bin/imagegen train-base --config configs/train/shapes-scratch-vae.toml --out runs/shapes-scratch-vae/model --resume
