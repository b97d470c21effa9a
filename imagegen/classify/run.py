"""Zero-shot classification of image files (Radford et al. 2021), its evaluation on a labelled folder, and CLIP
score (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image Captioning").

    files and folders (walked recursively) -> RGB images, preprocessed (a batch ahead when a core is free)
        -> CLIP image embeddings, normalised (N, D)
        -> logits = logit_scale * embeddings @ zero-shot weights (D, C) -> softmax -> top-k labels

CLIP score is 100 * max(cos(image, text), 0), torchmetrics' definition; Hessel et al. weight the clipped cosine
by 2.5 instead. `best_by_clip_score` ranks generated candidates with the pipeline's own CLIP pair (`--rerank`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..errors import UserError
from .backends import PipelineClip
from .report import EVAL_TOP_K, EvalResult, evaluation
from .zeroshot import DEFAULT_TEMPLATES, Templates, cached_zero_shot_weights, check_labels, check_templates

log = logging.getLogger("imagegen")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_BATCH_SIZE = 32
NAMES_SHOWN = 3  # bad files named in one error line
CLIP_SCORE_WEIGHT = 100.0


# ---------------------------------------------------------------- finding and reading images
def collect_images(paths: Sequence[str | Path], skip_bad: bool = False) -> list[Path]:
    """Image files from files and folders (folders walked recursively, sorted, by extension; hidden files skipped).
    Files that do not open as images are an error naming them, or with `skip_bad` a warning each."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{str(given)!r} is neither a file nor a folder")
    files = list(dict.fromkeys(files))
    if not files:
        shown = ", ".join(repr(str(p)) for p in paths) or "nothing"
        raise UserError(f"no image files ({' '.join(IMAGE_EXTENSIONS)}) in {shown}")
    # Opening reads only the header: cheap, and it catches non-images before any model is loaded. Broken image
    # data shows up later, when the batch is decoded.
    bad = [path for path in files if not _opens(path)]
    files = _drop_bad(files, bad, skip_bad)
    if not files:
        raise UserError("no readable images left after skipping the bad ones")
    return files


def _opens(path: Path) -> bool:
    try:
        with Image.open(path):
            return True
    except Exception:  # PIL raises OSError, SyntaxError, ValueError, ... depending on the format plug-in
        return False


def _drop_bad(files: list[Path], bad: list[Path], skip_bad: bool) -> list[Path]:
    if bad and not skip_bad:
        more = f" and {len(bad) - NAMES_SHOWN} more" if len(bad) > NAMES_SHOWN else ""
        names = ", ".join(repr(str(p)) for p in bad[:NAMES_SHOWN])
        raise UserError(f"not readable as an image: {names}{more}; pass --skip-bad to skip such files")
    for path in bad:
        log.warning("skipping %s: not a readable image", path)
    bad = set(bad)
    return [path for path in files if path not in bad]


def _load(group: list[Path], skip_bad: bool, preprocess) -> tuple[list[Path], object]:
    """The readable files of a batch, and their images (preprocessed when the backend can do that apart)."""
    paths, images = [], []
    for path in group:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
                paths.append(path)
        except Exception:  # truncated or corrupt data: any of PIL's decoder errors
            _drop_bad([path], [path], skip_bad)
    return paths, (preprocess(images) if preprocess and images else images)


def _loaded_batches(files: list[Path], batch_size: int, skip_bad: bool, preprocess, read_ahead: bool):
    """(batch length, files read, their images or pixels) per batch. With `read_ahead` the next batch is read and
    preprocessed on a worker thread while the model encodes this one (PIL and torch release the GIL)."""
    groups = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    if not read_ahead:
        for group in groups:
            yield len(group), *_load(group, skip_bad, preprocess)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_load, groups[0], skip_bad, preprocess)
        for i, group in enumerate(groups):
            paths, images = pending.result()
            if i + 1 < len(groups):
                pending = pool.submit(_load, groups[i + 1], skip_bad, preprocess)
            yield len(group), paths, images


def encode_image_files(backend, files: list[Path], batch_size: int = DEFAULT_BATCH_SIZE, skip_bad: bool = False,
                       progress: bool = True) -> tuple[list[Path], torch.Tensor]:
    """The files that could be read, and their normalised image embeddings (N, D), batch by batch."""
    if batch_size < 1:
        raise UserError(f"batch size must be a whole number >= 1, got {batch_size}")
    split = hasattr(backend, "preprocess") and hasattr(backend, "encode_pixels")
    encode = backend.encode_pixels if split else backend.encode_images
    # Reading ahead pays when a core is left over: the model runs on a GPU, or torch uses fewer threads than there
    # are cores. Otherwise the worker thread would only take cores from the forward pass.
    on_cpu = str(getattr(backend, "device", "cpu")).startswith("cpu")
    read_ahead = not on_cpu or torch.get_num_threads() < (os.cpu_count() or 1)
    kept, chunks = [], []
    show_bar = progress and len(files) > batch_size
    with tqdm(total=len(files), desc="images", unit="img", disable=not show_bar, leave=False) as bar:
        for count, paths, images in _loaded_batches(files, batch_size, skip_bad, backend.preprocess if split else None,
                                                    read_ahead):
            if paths:
                chunks.append(F.normalize(encode(images).float(), dim=-1).cpu())  # (B, D)
                kept += paths
            bar.update(count)
    if not kept:
        raise UserError("none of the images could be read")
    return kept, torch.cat(chunks)


# ---------------------------------------------------------------- zero-shot classification
@dataclass
class Prediction:
    path: str
    labels: list[str]  # best first
    probabilities: list[float]

    def as_dict(self) -> dict:
        return {"path": self.path,
                "predictions": [{"label": l, "probability": p} for l, p in zip(self.labels, self.probabilities)]}


def _checked(classnames: Sequence[str], templates: Templates) -> tuple[list[str], Templates]:
    classnames = check_labels(classnames)
    if not isinstance(templates, Mapping):
        return classnames, check_templates(list(templates))
    missing = [name for name in classnames if not templates.get(name)]
    if missing:
        raise UserError(f"the CuPL prompts have none for label {missing[0]!r}")
    return classnames, templates


def zero_shot_logits(backend, paths: Sequence[str | Path], classnames: Sequence[str],
                     templates: Templates = DEFAULT_TEMPLATES, batch_size: int = DEFAULT_BATCH_SIZE,
                     skip_bad: bool = False, progress: bool = True, use_cache: bool = True):
    """(files read, logits (N, C)): logit_scale x cosine between each image and each class's weights."""
    classnames, templates = _checked(classnames, templates)
    files = collect_images(paths, skip_bad)
    weights = cached_zero_shot_weights(backend, classnames, templates, use_cache)  # (D, C)
    kept, embeds = encode_image_files(backend, files, batch_size, skip_bad, progress)  # (N, D)
    return kept, backend.logit_scale * embeds @ weights


def classify(backend, paths: Sequence[str | Path], classnames: Sequence[str], templates: Templates = DEFAULT_TEMPLATES,
             top_k: int = 1, batch_size: int = DEFAULT_BATCH_SIZE, skip_bad: bool = False, progress: bool = True,
             use_cache: bool = True) -> list[Prediction]:
    """The top-k labels of every image, with softmax probabilities over all the labels."""
    if top_k < 1:
        raise UserError(f"--top-k must be a whole number >= 1, got {top_k}")
    classnames = check_labels(classnames)
    kept, logits = zero_shot_logits(backend, paths, classnames, templates, batch_size, skip_bad, progress, use_cache)
    top = logits.softmax(dim=-1).topk(min(top_k, len(classnames)), dim=-1)
    return [Prediction(str(path), [classnames[j] for j in indices], values)
            for path, values, indices in zip(kept, top.values.tolist(), top.indices.tolist())]


# ---------------------------------------------------------------- evaluation on a labelled folder
def labelled_images(folder: str | Path, skip_bad: bool = False) -> tuple[list[str], list[Path], list[int]]:
    """(class names, image files, class index of each file) from a folder with one subfolder per class. In folder
    names an underscore stands for a space ('red_circle' is the class 'red circle')."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"evaluation folder {str(folder)!r} does not exist")
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(subfolders) < 2:
        raise UserError(f"evaluation folder {str(folder)!r} needs one subfolder per class, at least two; "
                        f"found {len(subfolders)}")
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        log.warning("ignoring %d images directly in %s: only images in class subfolders count", len(loose), root)
    classes = check_labels([p.name.replace("_", " ") for p in subfolders], f"the subfolders of {str(folder)!r}")
    files, targets = [], []
    for index, subfolder in enumerate(subfolders):
        found = collect_images([subfolder], skip_bad)
        files += found
        targets += [index] * len(found)
    return classes, files, targets


def evaluate(backend, classes: list[str], files: list[Path], targets: list[int], templates: Templates = DEFAULT_TEMPLATES,
             batch_size: int = DEFAULT_BATCH_SIZE, skip_bad: bool = False, progress: bool = True,
             use_cache: bool = True, top_k: int = EVAL_TOP_K) -> EvalResult:
    kept, logits = zero_shot_logits(backend, files, classes, templates, batch_size, skip_bad, progress, use_cache)
    target_of = dict(zip(files, targets))
    return evaluation(logits, torch.tensor([target_of[path] for path in kept]), classes, top_k)


def evaluate_folder(backend, folder: str | Path, templates: Templates = DEFAULT_TEMPLATES, **options) -> EvalResult:
    """acc@1, acc@5, mean per-class recall and the confusion matrix on a folder of class subfolders."""
    classes, files, targets = labelled_images(folder, options.get("skip_bad", False))
    return evaluate(backend, classes, files, targets, templates, **options)


# ---------------------------------------------------------------- CLIP score
def _scores(backend, image_embeds: torch.Tensor, prompt: str) -> torch.Tensor:
    if not prompt or not prompt.strip():
        raise UserError("CLIP score needs a non-empty prompt")
    text = F.normalize(backend.encode_text([prompt]).float(), dim=-1).cpu()  # (1, D)
    return CLIP_SCORE_WEIGHT * (image_embeds @ text.T).squeeze(1).clamp(min=0)  # (N,)


def clip_score(backend, images: Sequence[Image.Image], prompt: str) -> torch.Tensor:
    """CLIP score (N,) of PIL images against one prompt: 100 * max(cosine, 0)."""
    embeds = F.normalize(backend.encode_images(list(images)).float(), dim=-1).cpu()  # (N, D)
    return _scores(backend, embeds, prompt)


def score_files(backend, paths: Sequence[str | Path], prompt: str, batch_size: int = DEFAULT_BATCH_SIZE,
                skip_bad: bool = False, progress: bool = True) -> list[tuple[str, float]]:
    files = collect_images(paths, skip_bad)
    kept, embeds = encode_image_files(backend, files, batch_size, skip_bad, progress)
    return list(zip(map(str, kept), _scores(backend, embeds, prompt).tolist()))


def best_by_clip_score(pipe, prompt: str, images: Sequence[Image.Image]) -> tuple[int, list[float]]:
    """(index of the candidate image closest to the prompt, every candidate's CLIP score), measured with the
    pipeline's own text and image encoders: the CLIP space its prior and decoder work in."""
    if not images:
        raise UserError("best_by_clip_score needs at least one candidate image")
    scores = clip_score(PipelineClip.from_pipeline(pipe), images, prompt).tolist()
    return max(range(len(scores)), key=scores.__getitem__), scores
