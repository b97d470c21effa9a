"""Training: `base/` trains the embedded default "shapes" model from scratch (`imagegen train-base`), `lora/` trains
LoRA adapters for any model (`imagegen train-lora`). Generation code never imports this package; the command line
imports only the options modules (`base.options`, `lora.options`), which load no torch.
"""
