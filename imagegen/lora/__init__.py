"""Swappable LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") for the decoder
U-Net, the prior and the text encoder: one safetensors file per adapter, several active at once, hot-swapped between
generations. peft holds the LoRA layers; diffusers' adapter API drives the U-Net and the prior."""
