"""CLIP zero-shot classification (Radford et al. 2021), with CuPL prompts (Pratt et al. 2023), evaluation on a
labelled folder, and CLIP score (Hessel et al. 2021) for reranking generated images.

    zeroshot  class names x templates -> normalised (D, C) weights, cached as safetensors (no torch at import)
    backends  the CLIP towers: the unCLIP model's own pair, or open_clip
    run       image files -> embeddings -> top-k labels; folder evaluation; CLIP score; best_by_clip_score
    report    acc@1, acc@k, mean per-class recall, confusion matrix and its PNG

    from imagegen.classify import load_backend, classify
    backend = load_backend("shapes")
    for p in classify(backend, ["renders/"], ["red circle", "blue square"], top_k=2):
        print(p.path, p.labels, p.probabilities)
"""
_HOMES = {
    "zero_shot_weights": "zeroshot", "cached_zero_shot_weights": "zeroshot", "DEFAULT_TEMPLATES": "zeroshot",
    "ClipBackend": "backends", "PipelineClip": "backends", "OpenClip": "backends", "load_backend": "backends",
    "collect_images": "run", "classify": "run", "evaluate_folder": "run", "clip_score": "run",
    "score_files": "run", "best_by_clip_score": "run", "EvalResult": "report", "confusion_png": "report",
}


def __getattr__(name):  # torch loads with the first function that needs it, not with the package
    if name not in _HOMES:
        raise AttributeError(name)
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
