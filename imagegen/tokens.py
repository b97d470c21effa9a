"""Prompt -> tokens: the one tokenizer call of the project (the pipeline, the CLIP backends and training share it).

Texts are padded to the tokenizer's full context length, as CLIP was trained, so a prompt's token states do not
depend on the other prompts of its batch.
"""
from __future__ import annotations


def tokenize(tokenizer, texts):
    """A CLIP tokenizer's BatchEncoding (input_ids, attention_mask) of shape (N, T) for texts."""
    return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt")
