"""Reranking by CLIP score: make N candidates for every requested image and keep the one whose CLIP image embedding
is closest to the prompt's text embedding, measured with the pipeline's own CLIP pair (no second model to load).

Candidates of image i are images i*N .. i*N+N-1 of one batch, so each keeps its own seed and the whole batch can be
made again bit-exactly (`--from-png` re-runs it and keeps the chosen index).
"""
from __future__ import annotations

from .errors import UserError
from .result import GenerationResult


def generate(pipe, *, rerank: int, num_images: int = 1, **call) -> GenerationResult:
    if not isinstance(rerank, int) or rerank < 1:
        raise UserError(f"--rerank must be a whole number >= 1, got {rerank!r}")
    result = pipe(num_images=num_images * rerank, **call)
    if rerank == 1:
        return result
    from .classify.run import best_by_clip_score
    from .lora.requests import split_prompt

    items = result.records[0]["mix"]
    prompt = split_prompt(call.get("prompt") or describe_texts(items))[0]
    images, records = [], []
    for i in range(num_images):
        group = slice(i * rerank, (i + 1) * rerank)
        best, scores = best_by_clip_score(pipe, prompt, result.images[group])
        record = dict(result.records[group][best])
        record["rerank"] = {"candidates": rerank, "clip_scores": [round(s, 4) for s in scores], "chosen": best,
                            "candidate_seeds": [r["seed"] for r in result.records[group]]}
        record["extra_infotext"] = {**record.get("extra_infotext", {}), "Rerank": f"best of {rerank}",
                                    "CLIP score": round(scores[best], 2)}
        images.append(result.images[group][best])
        records.append(record)
    return GenerationResult(images=images, records=records)


def describe_texts(items: list[dict]) -> str:
    """The text a mix is scored against: its texts joined (images contribute no words)."""
    texts = [item["text"] for item in items if "text" in item]
    if not texts:
        raise UserError("--rerank needs a text prompt to score against (image-only variations have none)")
    return ", ".join(texts)

