"""Reranking by CLIP score: make N candidates for every requested image and keep the one whose CLIP image embedding
is closest to the prompt's text embedding, measured with the pipeline's own CLIP pair (no second model to load).

Candidates of image i are images i*N .. i*N+N-1 of one batch (for a list of prompts, each prompt's images stay
together), so each keeps its own seed and the whole batch can be made again bit-exactly (`--from-png` re-runs it and
keeps the chosen index).
"""
from __future__ import annotations

from dataclasses import replace

from .errors import UserError
from .record import Rerank
from .result import GenerationResult


def generate(pipe, *, rerank: int, num_images: int = 1, **call) -> GenerationResult:
    if not isinstance(rerank, int) or isinstance(rerank, bool) or rerank < 1:
        raise UserError(f"--rerank must be a whole number >= 1, got {rerank!r}")
    result = pipe(num_images=num_images * rerank, **call)
    if rerank == 1:
        return result
    from .classify.run import best_by_clip_score

    images, records = [], []
    for start in range(0, len(result.images), rerank):
        group = slice(start, start + rerank)
        candidates = result.records[group]
        best, scores = best_by_clip_score(pipe, scoring_text(candidates[0]), result.images[group])
        records.append(replace(candidates[best], rerank=Rerank(
            candidates=rerank, chosen=best, clip_scores=tuple(round(s, 4) for s in scores),
            candidate_seeds=tuple(r.seed for r in candidates))))
        images.append(result.images[group][best])
    return GenerationResult(images=images, records=records)


def scoring_text(record) -> str:
    """The text an image is scored against: its prompt without <lora:...> tags, or a mix's texts joined (images
    contribute no words)."""
    from .lora.requests import split_prompt

    texts = [m.text for m in record.mix if m.text is not None] if record.mix else [record.prompt]
    if not texts:
        raise UserError("--rerank needs a text prompt to score against (image-only variations have none)")
    return ", ".join(split_prompt(text)[0] for text in texts)
