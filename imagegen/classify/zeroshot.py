"""Zero-shot classifier weights from class names (Radford et al. 2021, "Learning Transferable Visual Models From
Natural Language Supervision", sec. 3.1.4 and the prompt ensembling of 3.1.5).

Each class name is put into several prompt templates ("a photo of a {}."); the prompts' text embeddings are
L2-normalised and averaged, and the mean, normalised again, is that class's column of a linear classifier over
normalised image embeddings. Instead of shared templates, each class may bring its own prompts, as written by a
language model in CuPL (Pratt et al. 2023, "What does a platypus look like? Generating customized prompts for
zero-shot image classification"): a JSON object {class name: [prompt, ...]}.

`zero_shot_weights` computes what open_clip's `build_zero_shot_classifier` computes. `cached_zero_shot_weights`
keeps the matrix as safetensors in `$IMAGEGEN_CACHE/zeroshot/` (default `~/.cache/imagegen/zeroshot/`), keyed by
the text encoder's identity and every prompt of every class. No torch at import: the CLI checks labels and
templates with these functions before it loads a model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..errors import UserError

log = logging.getLogger("imagegen")

# Short, caption-like templates: the shapes-world CLIP was trained on captions such as "a red circle", so plain
# "a {}." phrasings suit it, and the photo/picture/drawing variants are the usual ensemble for web-trained CLIPs.
DEFAULT_TEMPLATES = (
    "a {}.",
    "{}.",
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
)
PLACEHOLDER = "{}"
TEXT_BATCH = 256  # prompts per text-encoder call: bounds memory for large label sets
CACHE_FORMAT = 1  # part of every cache key: bump it when the weights would be computed differently
CACHE_TENSOR = "weights"

Templates = Sequence[str] | Mapping[str, Sequence[str]]  # shared templates, or CuPL prompts per class


# ---------------------------------------------------------------- labels
def parse_labels(text: str) -> list[str]:
    """'red circle, blue square' -> ['red circle', 'blue square'] (blank entries are dropped)."""
    return check_labels([part.strip() for part in text.split(",") if part.strip()], "--labels")


def read_labels_file(path: str | Path) -> list[str]:
    """One label per line (labels may hold commas); blank lines are skipped."""
    lines = _read_text(path, "labels file").splitlines()
    return check_labels([line.strip() for line in lines if line.strip()], f"labels file {str(path)!r}")


def check_labels(labels: Sequence[str], source: str = "labels") -> list[str]:
    labels = [label.strip() for label in labels]
    if not labels:
        raise UserError(f"no labels in {source}; give at least one class name, e.g. --labels 'red circle,blue square'")
    if not all(labels):
        raise UserError(f"label {labels.index('') + 1} in {source} is empty")
    seen = {}
    for label in labels:
        # open_clip's and CLIP's tokenizers lowercase: 'Cat' and 'cat' would get the same weights.
        key = " ".join(label.lower().split())
        if key in seen:
            raise UserError(f"duplicate label {label!r} in {source} (same as {seen[key]!r}); each class must be named once")
        seen[key] = label
    return labels


# ---------------------------------------------------------------- templates and CuPL prompts
def read_templates_file(path: str | Path) -> list[str]:
    """One template per line, each holding `{}` where the class name goes; blank lines are skipped."""
    lines = _read_text(path, "templates file").splitlines()
    return check_templates([line.strip() for line in lines if line.strip()], f"templates file {str(path)!r}")


def check_templates(templates: Sequence[str], source: str = "templates") -> list[str]:
    if not templates:
        raise UserError(f"no templates in {source}; give one per line, each with {{}} for the class name")
    for template in templates:
        if PLACEHOLDER not in template:
            raise UserError(f"template {template!r} in {source} has no {{}} where the class name goes")
        try:
            template.format("x")  # open_clip fills templates with str.format: '{0}' or a lone '{' would break it
        except (IndexError, KeyError, ValueError):
            raise UserError(f"template {template!r} in {source} is not a valid format string; use {{}} alone "
                            "(write a literal brace as {{{{ or }}}})") from None
    return list(templates)


def read_cupl_file(path: str | Path, labels: Sequence[str] | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """A CuPL JSON object {class: [prompt, ...]} -> (class names, prompts per class). With `labels`, only those
    classes are kept and each must be present; without, the classes are the object's keys in file order."""
    source = f"CuPL file {str(path)!r}"
    try:
        data = json.loads(_read_text(path, "CuPL file"))
    except json.JSONDecodeError as err:
        raise UserError(f"{source} is not valid JSON: {err.msg} at line {err.lineno}") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{source} must hold a non-empty JSON object {{class name: [prompt, ...]}}")
    for name, prompts in data.items():
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise UserError(f"class {name!r} in {source} needs a non-empty list of non-empty prompt strings")
    if labels is None:
        labels = check_labels(list(data), source)
    missing = [label for label in labels if label not in data]
    if missing:
        raise UserError(f"{source} has no prompts for label {missing[0]!r}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return list(labels), {label: [p.strip() for p in data[label]] for label in labels}


def class_prompts(classnames: Sequence[str], templates: Templates) -> list[list[str]]:
    """The prompts of each class: templates filled with its name, or its own CuPL prompts."""
    if isinstance(templates, Mapping):
        return [list(templates[name]) for name in classnames]
    return [[template.format(name) for template in templates] for name in classnames]


# ---------------------------------------------------------------- the classifier
def zero_shot_weights(encode_text: Callable, classnames: Sequence[str], templates: Templates = DEFAULT_TEMPLATES):
    """(D, C) weights: column c is the normalised mean of class c's normalised prompt embeddings.

    `encode_text(list[str]) -> (N, D)` embeds prompts (normalised or not). Same computation as open_clip's
    `build_zero_shot_classifier`, but classes may have different numbers of prompts (CuPL).
    """
    import torch
    import torch.nn.functional as F

    prompts = class_prompts(classnames, templates)
    flat = [prompt for class_list in prompts for prompt in class_list]
    with torch.inference_mode():
        embeds = torch.cat([encode_text(flat[i:i + TEXT_BATCH]) for i in range(0, len(flat), TEXT_BATCH)])
    embeds = F.normalize(embeds.float(), dim=-1)  # (P, D)
    columns, start = [], 0
    for class_list in prompts:
        mean = embeds[start:start + len(class_list)].mean(dim=0)  # (D,)
        columns.append(F.normalize(mean, dim=0))
        start += len(class_list)
    return torch.stack(columns, dim=1).cpu()  # (D, C)


# ---------------------------------------------------------------- the cache
def cache_folder() -> Path:
    root = os.environ.get("IMAGEGEN_CACHE") or Path.home() / ".cache" / "imagegen"
    return Path(root) / "zeroshot"


def cache_key(model_identity: str, classnames: Sequence[str], templates: Templates) -> str:
    """Changes with the text encoder, any label, any prompt, or their order."""
    record = {"format": CACHE_FORMAT, "model": model_identity, "classes": list(classnames),
              "prompts": class_prompts(classnames, templates)}
    return hashlib.sha256(json.dumps(record, ensure_ascii=False).encode()).hexdigest()[:32]


def cached_zero_shot_weights(backend, classnames: Sequence[str], templates: Templates = DEFAULT_TEMPLATES,
                             use_cache: bool = True):
    """`zero_shot_weights` for a backend, read from or written to the cache. The cache only saves time: a file
    that cannot be read is computed again, and a folder that cannot be written is skipped with a warning."""
    if not use_cache or not backend.identity:  # no identity: nothing would tell a stale file from a fresh one
        return zero_shot_weights(backend.encode_text, classnames, templates)
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save

    from ..png import publish

    path = cache_folder() / f"{cache_key(backend.identity, classnames, templates)}.safetensors"
    if path.is_file():
        try:
            weights = load_file(path)[CACHE_TENSOR]
            if weights.shape[1] == len(classnames):
                return weights
        except (OSError, KeyError, SafetensorError):
            pass
        log.warning("zero-shot cache file %s is unreadable; computing the weights again", path)
        path.unlink(missing_ok=True)
    weights = zero_shot_weights(backend.encode_text, classnames, templates)
    metadata = {"model": backend.identity, "classes": json.dumps(list(classnames), ensure_ascii=False)}
    try:
        publish(save({CACHE_TENSOR: weights.contiguous()}, metadata), path.parent, iter([path.name]))
    except FileExistsError:
        pass  # another process wrote the same weights first
    except OSError as err:
        log.warning("cannot write the zero-shot cache in %s (%s); continuing without it", path.parent, err.strerror)
    return weights


def _read_text(path: str | Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or "not UTF-8 text"
        raise UserError(f"cannot read {what} {str(path)!r}: {reason}") from None
