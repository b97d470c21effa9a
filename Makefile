# The two set-up commands of README.md. Each creates .venv when it is missing and installs the project into it.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test samples

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
