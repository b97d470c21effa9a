"""Reading images with the served model's own CLIP pair: AUTOMATIC1111's `interrogate` (a caption) and the web UI's
Classify tab (zero-shot probabilities). Both run on the pipeline's worker thread, with the base encoders (no adapter
active), between generation calls.

The caption is built the way the shapes world describes its images, "a {colour} {shape} on a {background}
background", by zero-shot classifying one attribute at a time, each knowing the ones before: the shape, then the
colour of that shape, then the background behind that coloured shape.
"""
from __future__ import annotations

import base64
import binascii
import io

from ..data.attributes import COLOUR_NAMES, SHAPES
from .generation import FieldError

MAX_IMAGE_PIXELS = 4096 * 4096  # of an image sent to be read (a decompression bomb is refused before decoding)
CAPTION = "a {colour} {shape} on a {background} background"


def decode_image(field: str, data):
    """A base64 image as AUTOMATIC1111 takes it (raw, or a `data:image/...;base64,` URL) -> (PIL image, raw bytes)."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, str) or not data:
        raise FieldError(field, f"{field} must be a base64-encoded image (raw or a data: URL)")
    if data.startswith("data:"):
        head, _, data = data.partition(",")
        if not head.endswith(";base64"):
            raise FieldError(field, f"{field} is a data: URL that is not base64-encoded")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(field, f"{field} is not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise FieldError(field, f"{field} is {image.width}x{image.height}; at most {MAX_IMAGE_PIXELS} pixels "
                                    "are read")
        image.load()
    except FieldError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise FieldError(field, f"{field} is not an image PIL can read ({type(err).__name__})") from None
    return image, raw


def _clip(pipe):
    from ..classify.backends import PipelineClip

    if pipe.active_loras():
        pipe.loras.activate([])  # the base encoders; the next generation call sets its own adapters
    return PipelineClip.from_pipeline(pipe)


def _probabilities(backend, image, classnames, templates=("{}",)):
    import torch.nn.functional as F

    from ..classify.zeroshot import zero_shot_weights

    weights = zero_shot_weights(backend.encode_text, classnames, templates)  # (D, C)
    embed = F.normalize(backend.encode_images([image.convert("RGB")]).float(), dim=-1).cpu()  # (1, D)
    return (backend.logit_scale * embed @ weights).softmax(dim=-1)[0].tolist()


def _best(backend, image, options: dict) -> str:
    """The key of `options` (key -> text) whose text the image is closest to."""
    probabilities = _probabilities(backend, image, list(options.values()))
    return max(zip(options, probabilities), key=lambda pair: pair[1])[0]


def caption(pipe, image) -> str:
    backend = _clip(pipe)
    shape = _best(backend, image, {s: f"a {s}" for s in SHAPES})
    colour = _best(backend, image, {c: f"a {c} {shape}" for c in COLOUR_NAMES})
    background = _best(backend, image, {b: f"a {colour} {shape} on a {b} background"
                                        for b in COLOUR_NAMES if b != colour})
    return CAPTION.format(colour=colour, shape=shape, background=background)


def classify(pipe, image, labels: list[str]) -> dict[str, float]:
    """{label: probability} over `labels`, with the default prompt ensemble of `imagegen classify`."""
    from ..classify.zeroshot import DEFAULT_TEMPLATES, check_labels

    labels = check_labels(labels, "the labels")
    return dict(zip(labels, _probabilities(_clip(pipe), image, labels, DEFAULT_TEMPLATES)))
