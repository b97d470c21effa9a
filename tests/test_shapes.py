"""The shapes world generator: determinism, geometry, colours, captions and dataset files."""

import json
import math
import time

import numpy as np
import pytest
from PIL import Image

from imagegen.data import shapes
from imagegen.data.shapes import (
    ALL_SHAPES,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZE_RADII,
    ShapeAttributes,
    caption,
    full_caption,
    generate,
    parse_prompt,
    render,
    render_mask,
    sample_attributes,
    write_dataset,
)

SIDE = shapes.IMAGE_SIZE


def area(mask: np.ndarray) -> float:
    """Covered area as a fraction of the image."""
    return float(mask.sum()) / SIDE**2


@pytest.fixture(scope="module")
def examples():
    return generate(seed=7, n=400)


# --- Determinism ----------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_labels():
    first, second = generate(3, 40), generate(3, 40)
    assert first[0].tobytes() == second[0].tobytes()
    assert first[1:] == second[1:]


def test_different_seeds_give_different_data():
    first, second = generate(3, 40), generate(4, 40)
    assert first[0].tobytes() != second[0].tobytes()
    assert first[1] != second[1]


def test_batches_continue_generate():
    stream = shapes.batches(5, 16)
    images = np.concatenate([next(stream)[0] for _ in range(3)])
    assert np.array_equal(images, generate(5, 48)[0])


def test_forcing_one_attribute_keeps_the_others_of_the_seed():
    free = sample_attributes(np.random.default_rng(11))
    forced = sample_attributes(np.random.default_rng(11), fixed={"shape": "heart"})
    assert forced.shape == "heart"
    assert (forced.colour, forced.background, forced.size, forced.position) == (
        free.colour, free.background, free.size, free.position)  # fmt: skip


def test_output_types(examples):
    images, captions, attributes = examples
    assert images.shape == (400, SIDE, SIDE, 3) and images.dtype == np.uint8
    assert len(captions) == len(attributes) == 400
    assert all(isinstance(attrs, ShapeAttributes) for attrs in attributes)


# --- Geometry -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [0.14, 0.22, 0.32])
def test_circle_area_is_pi_r_squared(r):
    assert area(render_mask("circle", r, 0.5, 0.5)) == pytest.approx(math.pi * r * r, rel=0.03)


@pytest.mark.parametrize("r", [0.14, 0.22, 0.32])
def test_square_area_is_side_squared(r):
    assert area(render_mask("square", r, 0.47, 0.52)) == pytest.approx((2 * 0.85 * r) ** 2, rel=0.03)


@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_rendered_area_matches_polygon_area(shape):
    r, cx, cy = 0.25, 0.51, 0.48
    expected = shapes.polygon_area(shapes.shape_polygon(shape, r, cx, cy))
    assert area(render_mask(shape, r, cx, cy)) == pytest.approx(expected, rel=0.03)


def test_star_is_much_thinner_than_its_circle():
    star, circle = (area(render_mask(shape, 0.3, 0.5, 0.5)) for shape in ("star", "circle"))
    assert 0.35 < star / circle < 0.50  # polygon: 1.32 r^2 against pi r^2


def test_triangle_points_up_and_heart_points_down():
    def middle_column_reach(shape):
        """How far the shape reaches above and below its centre along the middle column, in pixels."""
        rows = np.flatnonzero(render_mask(shape, 0.3, 0.5, 0.5)[:, SIDE // 2] > 0.5) + 0.5
        return SIDE / 2 - rows[0], rows[-1] + 1 - SIDE / 2

    up, down = middle_column_reach("triangle")
    assert up > 1.6 * down  # an apex at r above a base at r / 2 below
    up, down = middle_column_reach("heart")
    assert down > 1.3 * up  # the point below, the dip between the lobes above
    triangle = render_mask("triangle", 0.3, 0.5, 0.5)
    lower_half = triangle[SIDE // 2 :].sum() / triangle.sum()
    assert lower_half == pytest.approx(0.556, abs=0.01)  # the wide base holds more of the area


def test_outline_is_a_ring_of_three_pixels():
    r = 0.3
    ring = render_mask("circle", r, 0.5, 0.5, style="outline")
    width = shapes.OUTLINE_WIDTH_PX / SIDE
    assert area(ring) == pytest.approx(math.pi * (r**2 - (r - width) ** 2), rel=0.05)
    assert ring[SIDE // 2, SIDE // 2] == 0  # background inside


@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_small_outlined_shapes_still_show_their_inside(shape):
    r = SIZE_RADII["small"] * (1 - shapes.SIZE_JITTER)
    inside = render_mask(shape, r, 0.5, 0.5) - render_mask(shape, r, 0.5, 0.5, style="outline")
    assert inside.max() > 0.9


def test_shapes_stay_inside_the_image_with_a_background_margin():
    rng = np.random.default_rng(0)
    margin = shapes.EDGE_MARGIN_PX - 1  # allow the anti-aliased edge to bleed one pixel
    for _ in range(300):
        attrs = sample_attributes(rng, shapes=ALL_SHAPES, fixed={"size": "large"})
        mask = render_mask(attrs.shape, attrs.r, attrs.cx, attrs.cy)
        assert mask[:margin].max() == mask[-margin:].max() == mask[:, :margin].max() == mask[:, -margin:].max() == 0
        assert area(mask) > 0.1  # clamping moved it, it did not crop it


def test_positions_put_the_shape_in_its_grid_cell(examples):
    def cell(centre):  # a large shape is clamped towards the middle, so its cell reaches to 0.42 / 0.58
        return 0 if centre < 0.42 else 2 if centre > 0.58 else 1

    _, _, attributes = examples
    for attrs in attributes:
        assert divmod(POSITIONS.index(attrs.position), 3) == (cell(attrs.cy), cell(attrs.cx))
        if attrs.size == "small":  # unclamped: in the right third of the image
            assert divmod(POSITIONS.index(attrs.position), 3) == (int(attrs.cy * 3), int(attrs.cx * 3))


def test_sizes_follow_their_radii(examples):
    _, _, attributes = examples
    for attrs in attributes:
        assert abs(attrs.r / SIZE_RADII[attrs.size] - 1) <= shapes.SIZE_JITTER + 1e-9


# --- Colours and sampling -------------------------------------------------------------------------------


def test_background_never_equals_shape_colour(examples):
    _, _, attributes = examples
    assert all(attrs.colour != attrs.background for attrs in attributes)
    assert len({attrs.colour for attrs in attributes}) == len({attrs.background for attrs in attributes}) == 8


def test_pixels_show_the_jittered_palette_colours():
    rng = np.random.default_rng(1)
    for _ in range(50):
        attrs = sample_attributes(rng, fixed={"shape": "square", "size": "large"})
        image = render(attrs, rng).astype(int)
        tolerance = shapes.COLOUR_JITTER + 1
        assert np.abs(image[0, 0] - COLOURS[attrs.background]).max() <= tolerance
        centre = image[int(attrs.cy * SIDE), int(attrs.cx * SIDE)]
        assert np.abs(centre - COLOURS[attrs.colour]).max() <= tolerance


def test_outline_style_paints_the_inside_with_the_background():
    rng = np.random.default_rng(2)
    attrs = sample_attributes(rng, style="outline", fixed={"shape": "circle", "size": "large"})
    image = render(attrs, rng).astype(int)
    assert np.abs(image[int(attrs.cy * SIDE), int(attrs.cx * SIDE)] - image[0, 0]).max() <= 2 * shapes.COLOUR_JITTER + 1


def test_heart_and_outline_only_when_requested(examples):
    _, captions, attributes = examples
    assert {attrs.shape for attrs in attributes} == set(SHAPES)
    assert {attrs.style for attrs in attributes} == {"filled"}
    assert not any("heart" in text or "outlined" in text for text in captions)
    hearts = generate(1, 20, shapes=("heart",), style="outline")[2]
    assert all(attrs.shape == "heart" and attrs.style == "outline" for attrs in hearts)


def test_fixed_attributes_are_validated():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="colour"):
        sample_attributes(rng, fixed={"colour": "pink"})
    with pytest.raises(ValueError, match="background"):
        sample_attributes(rng, fixed={"colour": "red", "background": "red"})
    forced = sample_attributes(rng, fixed={"background": "red", "position": "at the bottom left"})
    assert forced.background == "red" and forced.colour != "red" and forced.position == "at the bottom left"


# --- Captions -------------------------------------------------------------------------------------------


def test_captions_parse_back_to_the_attributes_they_state(examples):
    _, captions, attributes = examples
    for text, attrs in zip(captions, attributes):
        stated = parse_prompt(text)
        assert stated["shape"] == attrs.shape, text
        assert all(getattr(attrs, name) == value for name, value in stated.items()), text


def test_outlined_captions_always_say_so():
    _, captions, attributes = generate(2, 100, style="outline")
    assert all(parse_prompt(text)["style"] == "outline" for text in captions)


def test_full_caption_states_everything():
    for attrs in generate(9, 100, shapes=ALL_SHAPES, style="outline")[2] + generate(9, 100)[2]:
        expected = attrs.labels()
        if attrs.style == "filled":
            del expected["style"]  # the default style goes unsaid
        assert parse_prompt(full_caption(attrs)) == expected


def test_full_caption_grammar():
    attrs = ShapeAttributes("star", "orange", "blue", "small", "at the top left", "outline", 0.14, 0.3, 0.3)
    assert full_caption(attrs) == "a small orange outlined star at the top left on a blue background"


def test_caption_keeps_attributes_with_the_given_probabilities():
    _, captions, _ = generate(4, 1000)
    stated = [parse_prompt(text) for text in captions]
    for name, probability in shapes.CAPTION_KEEP_PROBABILITY.items():
        assert abs(np.mean([name in s for s in stated]) - probability) < 0.05, name
    paraphrased = np.mean([text.startswith(("a picture of", "an image of", "a drawing of")) for text in captions])
    assert 0.08 < paraphrased < 0.16  # 3 of the 5 paraphrases, used 20% of the time
    everything = {"colour": 1.0, "size": 1.0, "position": 1.0, "background": 1.0}
    attrs = generate(4, 1)[2][0]
    text = caption(attrs, np.random.default_rng(0), p_keep=everything)
    assert parse_prompt(text) == {k: v for k, v in attrs.labels().items() if k != "style"}


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a red circle", {"colour": "red", "shape": "circle"}),
        ("red circle on a blue background", {"colour": "red", "shape": "circle", "background": "blue"}),
        ("A picture of a LARGE star in the centre.", {"size": "large", "shape": "star", "position": "in the center"}),
        ("an orange outlined heart at the bottom right",
         {"colour": "orange", "style": "outline", "shape": "heart", "position": "at the bottom right"}),
        ("two small crosses at the top, white background",
         {"size": "small", "shape": "cross", "position": "at the top", "background": "white"}),
        ("a filled square at the left", {"style": "filled", "shape": "square", "position": "at the left"}),
        ("a cat", {}),
    ],
)  # fmt: skip
def test_parse_prompt(prompt, expected):
    assert parse_prompt(prompt) == expected


# --- Dataset files and speed ----------------------------------------------------------------------------


def test_write_dataset_files_and_refusal(tmp_path):
    folder = write_dataset(tmp_path / "data", n=12, seed=5, shapes=ALL_SHAPES)
    images, captions, attributes = generate(5, 12, shapes=ALL_SHAPES)
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{i:05d}.png" for i in range(12)]
    records = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 12
    for index, record in enumerate(records):
        assert np.array_equal(np.asarray(Image.open(folder / record["file_name"])), images[index])
        assert (folder / f"{index:05d}.txt").read_text() == record["text"] == captions[index]
        assert record["shape"] == attributes[index].shape
        assert record["r"] == pytest.approx(attributes[index].r, abs=1e-5)
    with pytest.raises(ValueError, match="not an empty folder"):
        write_dataset(folder, n=2, seed=0)
    (tmp_path / "empty").mkdir()
    assert len(list(write_dataset(tmp_path / "empty", n=2, seed=0).glob("*.txt"))) == 2


def test_rendering_is_fast():
    generate(0, 20)  # warm the caches
    started = time.perf_counter()
    generate(1, 500)
    per_second = 500 / (time.perf_counter() - started)
    print(f"shapes: {per_second:.0f} images/s")
    assert per_second > 300  # ~2500/s on one idle core; the bar leaves room for a busy test machine
