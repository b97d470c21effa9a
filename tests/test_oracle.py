"""The pixel oracle reads back the attributes of rendered ground-truth images, clean and degraded."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from imagegen.data import shapes
from imagegen.data.shapes import ATTRIBUTE_NAMES, full_caption, generate, parse_prompt
from imagegen.evaluation.oracle import OracleReading, read_image, score


@pytest.fixture(scope="module")
def ground_truth():
    """600 images: the base world, held-out hearts, and outlines of every shape (hearts included)."""
    parts = [
        generate(101, 300),
        generate(102, 100, shapes=("heart",)),
        generate(103, 200, shapes=shapes.ALL_SHAPES, style="outline"),
    ]
    images = np.concatenate([images for images, _, _ in parts])
    attributes = [attrs for _, _, part in parts for attrs in part]
    return images, attributes


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Roughly what a diffusion model makes of an image: blurred (sigma 1 px) and noisy (sigma 6 of 255)."""
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)
    return np.clip(np.rint(blurred + rng.normal(0, 6, blurred.shape)), 0, 255).astype(np.uint8)


def accuracies(readings, attributes, keep=lambda attrs: True) -> dict[str, float]:
    pairs = [(reading, attrs) for reading, attrs in zip(readings, attributes) if keep(attrs)]
    assert pairs
    return {name: round(float(np.mean([getattr(r, name) == getattr(a, name) for r, a in pairs])), 4)
            for name in ATTRIBUTE_NAMES}  # fmt: skip


@pytest.fixture(scope="module")
def clean_readings(ground_truth):
    return [read_image(image) for image in ground_truth[0]]


@pytest.fixture(scope="module")
def degraded_readings(ground_truth):
    rng = np.random.default_rng(0)
    return [read_image(degrade(image, rng)) for image in ground_truth[0]]


SUBSETS = {
    "all": lambda attrs: True,
    "heart": lambda attrs: attrs.shape == "heart",
    "outline": lambda attrs: attrs.style == "outline",
    "small": lambda attrs: attrs.size == "small",
}


@pytest.mark.parametrize("subset", SUBSETS)
def test_clean_images_are_read_correctly(ground_truth, clean_readings, subset):
    accuracy = accuracies(clean_readings, ground_truth[1], SUBSETS[subset])
    print(f"clean {subset}: {accuracy}")
    assert min(accuracy.values()) >= 0.99, accuracy


@pytest.mark.parametrize("subset", SUBSETS)
def test_blurred_noisy_images_are_read_correctly(ground_truth, degraded_readings, subset):
    accuracy = accuracies(degraded_readings, ground_truth[1], SUBSETS[subset])
    print(f"blurred + noisy {subset}: {accuracy}")
    assert min(accuracy.values()) >= 0.97, accuracy


def test_fitted_geometry_is_accurate(ground_truth, clean_readings):
    attributes = ground_truth[1]
    radius_errors = [abs(reading.r / attrs.r - 1) for reading, attrs in zip(clean_readings, attributes)]
    centre_errors = [np.hypot(reading.cx - attrs.cx, reading.cy - attrs.cy) * shapes.IMAGE_SIZE
                     for reading, attrs in zip(clean_readings, attributes)]  # fmt: skip
    assert np.percentile(radius_errors, 95) < 0.03
    assert max(centre_errors) < 0.75  # pixels
    assert np.median([reading.iou for reading in clean_readings]) > 0.9


def test_large_images_are_resized_first(ground_truth, clean_readings):
    images, attributes = ground_truth[0][::6], ground_truth[1][::6]  # 100 of every kind
    readings = [read_image(Image.fromarray(image).resize((256, 256), Image.Resampling.BICUBIC)) for image in images]
    accuracy = accuracies(readings, attributes)
    print(f"256x256: {accuracy}")
    assert min(accuracy.values()) >= 0.99, accuracy


def test_input_types_agree(ground_truth):
    image = ground_truth[0][0]
    as_array = read_image(image)
    assert read_image(Image.fromarray(image)) == as_array
    assert read_image(image.astype(np.float32) / 255).labels() == as_array.labels()


def test_blank_image_shows_no_shape():
    blank = np.full((64, 64, 3), shapes.COLOURS["blue"], dtype=np.uint8)
    reading = read_image(blank)
    assert reading.background == "blue" and reading.shape is None and reading.colour is None
    checks = score(reading, {"shape": "circle", "background": "blue"})
    assert checks == {"shape": False, "background": True, "all": False}


def test_a_bar_matches_no_template_well():
    bar = np.full((64, 64, 3), shapes.COLOURS["white"], dtype=np.uint8)
    bar[28:36, 8:56] = shapes.COLOURS["red"]
    reading = read_image(bar)
    assert reading.colour == "red" and reading.background == "white"
    assert reading.iou < 0.7


def test_score_checks_only_what_the_prompt_states(ground_truth, clean_readings):
    reading, attrs = clean_readings[0], ground_truth[1][0]
    assert isinstance(reading, OracleReading)
    everything = score(reading, parse_prompt(full_caption(attrs)))
    assert set(everything) == {"shape", "colour", "background", "size", "position", "all"}  # filled goes unsaid
    assert all(everything.values())
    wrong_colour = next(name for name in shapes.COLOUR_NAMES if name not in (attrs.colour, attrs.background))
    checks = score(reading, {"shape": attrs.shape, "colour": wrong_colour})
    assert checks == {"shape": True, "colour": False, "all": False}
    assert score(reading, {}) == {"all": True}
    with pytest.raises(ValueError, match="unknown attributes"):
        score(reading, {"texture": "smooth"})
