"""A Hugging Face CLIPTokenizer built offline from the CLIP BPE vocabulary that ships inside open_clip_torch.

open_clip and OpenAI's CLIP share one byte-level BPE: 256 byte symbols, the same 256 with the end-of-word mark
`</w>`, 48,894 merges, then the two special tokens (49,408 in all). Hugging Face names the specials
`<|startoftext|>` / `<|endoftext|>` where open_clip says `<start_of_text>` / `<end_of_text>`, and pads with
`<|endoftext|>`, so CLIP's pooling ("the first end-of-text token") finds the real end of the prompt.

`vocabulary="bytes"` makes the same tokenizer with no merges (514 tokens): every character is a token. Tests use it
for tiny models whose embedding table must stay small.
"""
from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_MERGE_COUNT = 49152 - 256 - 2  # open_clip reads lines 1..48894 of its merges file


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def clip_merges() -> list[str]:
    import open_clip

    path = Path(os.path.dirname(open_clip.__file__)) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    return lines[1:CLIP_MERGE_COUNT + 1]


def clip_vocabulary(vocabulary: str = "clip") -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges) for 'clip' (the real BPE) or 'bytes' (characters only)."""
    if vocabulary not in ("clip", "bytes"):
        raise ValueError(f"vocabulary must be 'clip' or 'bytes', got {vocabulary!r}")
    symbols = list(bytes_to_unicode().values())
    merges = [tuple(line.split()) for line in clip_merges()] if vocabulary == "clip" else []
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_clip_tokenizer(vocabulary: str = "clip", model_max_length: int = 77):
    """A CLIPTokenizer (save it with the model through save_pretrained)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocabulary(vocabulary)
    return CLIPTokenizer(vocab=vocab, merges=merges, unk_token=EOS, bos_token=BOS, eos_token=EOS, pad_token=EOS,
                         model_max_length=model_max_length)
