"""CLIP zero-shot classification, folder evaluation and CLIP score: parity with open_clip's own zero-shot path,
the weight cache, every bad input (one line, exit 2), metrics on known answers, and the pipeline's CLIP pair."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from imagegen.classify import backends, run, zeroshot
from imagegen.classify.report import evaluation
from imagegen.cli import main
from imagegen.errors import UserError

TINY_ARCH = "imagegen-test-tiny-clip"
# Small enough to build in well under a second; vision width / head_width gives 2 attention heads.
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLASSES = ["red circle", "blue square", "green triangle"]
TEMPLATES = ["a {}.", "a photo of a {}.", "a drawing of a {}."]
PARITY_TOLERANCE = 1e-5


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_images(folder, count, seed=0, size=40):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def open_clip_tiny(tmp_path_factory):
    """A random open_clip model of a tiny registered architecture, saved as safetensors."""
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("open_clip")
    (folder / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder / f"{TINY_ARCH}.json")
    torch.manual_seed(0)
    with backends.quiet_logging():
        model, _, preprocess = open_clip.create_model_and_transforms(TINY_ARCH)
    model.eval()
    checkpoint = folder / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, checkpoint)
    return SimpleNamespace(model=model, preprocess=preprocess, tokenizer=open_clip.get_tokenizer(TINY_ARCH),
                           checkpoint=checkpoint, spec=f"open_clip:{TINY_ARCH}")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------- (a, b) parity with open_clip
def test_logits_equal_open_clips_zero_shot_path(open_clip_tiny, tmp_path):
    from open_clip import build_zero_shot_classifier

    files = write_images(tmp_path / "images", 5)
    backend = backends.load_backend(open_clip_tiny.spec, str(open_clip_tiny.checkpoint))
    kept, logits = run.zero_shot_logits(backend, [tmp_path / "images"], CLASSES, TEMPLATES, progress=False)
    assert kept == files
    # In batches of 2 the CPU kernels round differently from one batch of 5 (by an ulp or two): same tolerance.
    _, logits_in_batches = run.zero_shot_logits(backend, files, CLASSES, TEMPLATES, batch_size=2, progress=False)

    model, tokenizer = open_clip_tiny.model, open_clip_tiny.tokenizer
    with torch.no_grad():
        classifier = build_zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES)
        pixels = torch.stack([open_clip_tiny.preprocess(Image.open(f).convert("RGB")) for f in files])
        reference = 100.0 * model.encode_image(pixels, normalize=True) @ classifier
    difference = (logits - reference).abs().max().item()
    batched_difference = (logits_in_batches - reference).abs().max().item()
    print(f"parity max abs diff: {difference:.3g} (one batch), {batched_difference:.3g} (batches of 2)")
    assert difference <= PARITY_TOLERANCE and batched_difference <= PARITY_TOLERANCE


def test_preprocess_equals_open_clips_transform_bit_for_bit(open_clip_tiny):
    """Images already at the model's size skip Resize/CenterCrop and are normalised as one batch: the pixels must be
    exactly open_clip's; other sizes and modes go through the transform itself."""
    backend = backends.load_backend(open_clip_tiny.spec, str(open_clip_tiny.checkpoint))
    side = TINY_CONFIG["vision_cfg"]["image_size"]
    assert backend._fast is not None and backend._fast[0] == side  # the batched path applies to this transform
    rng = np.random.default_rng(1)
    at_size = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(3)]
    other = at_size[:1] + [Image.fromarray(rng.integers(0, 256, (side + 8, side, 3), dtype=np.uint8)),
                           at_size[1].convert("L")]
    for images in (at_size, other):
        reference = torch.stack([open_clip_tiny.preprocess(image) for image in images])
        assert torch.equal(backend.preprocess(images), reference)


def test_zero_shot_weights_equal_open_clips(open_clip_tiny):
    from open_clip import build_zero_shot_classifier

    model, tokenizer = open_clip_tiny.model, open_clip_tiny.tokenizer
    with torch.no_grad():
        reference = build_zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES)
    encode = lambda texts: model.encode_text(tokenizer(texts))  # noqa: E731
    weights = zeroshot.zero_shot_weights(encode, CLASSES, TEMPLATES)
    assert weights.shape == (TINY_CONFIG["embed_dim"], len(CLASSES))
    assert torch.allclose(weights, reference, atol=1e-6)
    # CuPL prompts that happen to be the filled templates give the same classifier.
    cupl = {name: [t.format(name) for t in TEMPLATES] for name in CLASSES}
    assert torch.allclose(zeroshot.zero_shot_weights(encode, CLASSES, cupl), reference, atol=1e-6)


# ---------------------------------------------------------------- (c) the cache
class CountingBackend:
    """Deterministic text embeddings from a hash of the prompt; counts how many prompts it encoded."""

    name, logit_scale = "counting", 100.0

    def __init__(self, identity="counting-v1"):
        self.identity, self.encoded = identity, 0

    def encode_text(self, texts):
        self.encoded += len(texts)
        return torch.stack([torch.randn(8, generator=torch.Generator().manual_seed(hash(t) % 2**31)) for t in texts])


def test_cache_hit_is_identical_and_keys_follow_model_labels_templates():
    backend = CountingBackend()
    first = zeroshot.cached_zero_shot_weights(backend, CLASSES, TEMPLATES)
    assert backend.encoded == len(CLASSES) * len(TEMPLATES)
    assert len(list(zeroshot.cache_folder().glob("*.safetensors"))) == 1
    second = zeroshot.cached_zero_shot_weights(backend, CLASSES, TEMPLATES)
    assert backend.encoded == len(CLASSES) * len(TEMPLATES)  # nothing encoded again
    assert torch.equal(first, second)

    key = zeroshot.cache_key("counting-v1", CLASSES, TEMPLATES)
    assert key == zeroshot.cache_key("counting-v1", list(CLASSES), list(TEMPLATES))
    assert key != zeroshot.cache_key("counting-v2", CLASSES, TEMPLATES)
    assert key != zeroshot.cache_key("counting-v1", CLASSES[:2] + ["green star"], TEMPLATES)
    assert key != zeroshot.cache_key("counting-v1", CLASSES, TEMPLATES + ["an image of a {}."])
    assert key != zeroshot.cache_key("counting-v1", CLASSES, {c: [f"a {c}"] for c in CLASSES})


def test_unreadable_cache_file_is_recomputed():
    backend = CountingBackend()
    weights = zeroshot.cached_zero_shot_weights(backend, CLASSES, TEMPLATES)
    (cached,) = zeroshot.cache_folder().glob("*.safetensors")
    cached.write_bytes(b"not safetensors")
    assert torch.equal(zeroshot.cached_zero_shot_weights(backend, CLASSES, TEMPLATES), weights)


# ---------------------------------------------------------------- (d) bad input: one line, exit 2
@pytest.fixture
def image_folder(tmp_path):
    write_images(tmp_path / "imgs", 2)
    return tmp_path / "imgs"


def _text_file(path, text):
    path.write_text(text)
    return path


BAD_INPUTS = [
    # (arguments after 'classify' IMAGES, words the one-line error must hold)
    (["--labels", " , "], ["no labels"]),
    (["--labels", "red circle,blue square,Red Circle"], ["duplicate label", "Red Circle"]),
    (["--labels", "a,b", "--templates", "TEMPLATES_FILE"], ["a picture of a thing", "{}"]),
    (["--labels", "a,b", "--top-k", "0"], ["--top-k"]),
    (["--labels", "a,b", "--json", "--csv"], ["not allowed"]),
    (["--labels", "a,b", "--clip", "no-such-backend"], ["no-such-backend", "open_clip:ARCH/PRETRAINED", "--checkpoint"]),
    (["--labels", "a,b", "--clip", "open_clip:no-such-arch/x"], ["unknown open_clip architecture", "no-such-arch"]),
    (["--labels", "a,b", "--clip", "open_clip:ViT-B-32/no-such-tag"], ["no-such-tag"]),
    (["--labels", "a,b", "--clip", "open_clip:ViT-B-32"], ["needs weights"]),
    (["--labels", "a,b", "--clip", "open_clip:ViT-B-32", "--checkpoint", "model.pt"], ["pickle", "model.pt"]),
    (["--labels", "a,b", "--checkpoint", "w.safetensors"], ["--checkpoint goes with an open_clip"]),
    (["--labels", "a,b", "--device", "tpu"], ["tpu"]),
    (["--cupl", "CUPL_FILE"], ["'blue'", "non-empty list"]),
]


@pytest.mark.parametrize("extra, words", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2(extra, words, image_folder, tmp_path, capsys):
    templates = _text_file(tmp_path / "templates.txt", "a photo of a {}.\na picture of a thing\n")
    cupl = _text_file(tmp_path / "cupl.json", json.dumps({"red": ["a red thing"], "blue": []}))
    extra = [{"TEMPLATES_FILE": templates, "CUPL_FILE": cupl}.get(a, a) for a in extra]
    code, out, err = run_cli(capsys, "classify", image_folder, *extra)
    assert code == 2 and out == ""
    assert err.startswith("imagegen: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err


def test_bad_files_are_named_or_skipped(open_clip_tiny, image_folder, tmp_path, capsys, caplog):
    text = _text_file(image_folder / "notes.png", "not an image")  # an image extension, but not an image
    code, _, err = run_cli(capsys, "classify", image_folder, "--labels", "a,b")
    assert code == 2 and err.count("\n") == 1 and "notes.png" in err and "--skip-bad" in err
    code, _, err = run_cli(capsys, "classify", tmp_path / "missing.png", "--labels", "a,b")
    assert code == 2 and "missing.png" in err
    code, out, err = run_cli(capsys, "classify", image_folder, text, "--labels", "a,b", "--skip-bad", "--json",
                             "--clip", open_clip_tiny.spec, "--checkpoint", open_clip_tiny.checkpoint)
    assert code == 0, err
    assert "skipping" in caplog.text and "notes.png" in caplog.text
    assert [json.loads(line)["path"].endswith(".png") for line in out.splitlines()] == [True, True]


@pytest.mark.parametrize("cores", [1, 64])  # 1: torch has every core, read in turn; 64: read a batch ahead
def test_broken_image_data_is_named_or_skipped_at_decode_time(cores, open_clip_tiny, tmp_path, monkeypatch, caplog):
    files = write_images(tmp_path / "imgs", 5)
    data = files[2].read_bytes()
    files[2].write_bytes(data[:len(data) // 2])  # the header opens, the pixel data is cut off
    monkeypatch.setattr(run.os, "cpu_count", lambda: cores)
    backend = backends.load_backend(open_clip_tiny.spec, str(open_clip_tiny.checkpoint))
    with pytest.raises(UserError, match="img02.png"):
        run.encode_image_files(backend, files, batch_size=2, progress=False)
    kept, embeds = run.encode_image_files(backend, files, batch_size=2, skip_bad=True, progress=False)
    assert kept == files[:2] + files[3:] and "img02.png" in caplog.text
    assert torch.allclose(embeds, run.encode_image_files(backend, kept, batch_size=4, progress=False)[1], atol=1e-5)


def test_checkpoint_that_does_not_fit_is_one_line(open_clip_tiny, image_folder, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    state = load_file(open_clip_tiny.checkpoint)
    state.pop("text_projection")
    state["extra.weight"] = torch.zeros(2)
    state["visual.proj"] = torch.zeros(3, 3)
    broken = tmp_path / "broken.safetensors"
    save_file(state, broken)
    code, _, err = run_cli(capsys, "classify", image_folder, "--labels", "a,b", "--clip", open_clip_tiny.spec,
                           "--checkpoint", broken)
    assert code == 2 and err.count("\n") == 1
    assert "1 missing (e.g. text_projection)" in err and "1 unexpected (e.g. extra.weight)" in err
    assert "1 with another shape" in err and "visual.proj (3, 3) vs (32, 32)" in err


def test_pretrained_weights_not_in_the_cache_are_one_line(image_folder, capsys, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    code, _, err = run_cli(capsys, "classify", image_folder, "--labels", "a,b",
                           "--clip", "open_clip:ViT-B-32/laion2b_s34b_b79k")
    assert code == 2 and err.count("\n") == 1 and "laion2b_s34b_b79k" in err and "hub is reachable" in err


def test_eval_folder_needs_class_subfolders(tmp_path, capsys):
    write_images(tmp_path / "only" / "circle", 1)
    code, _, err = run_cli(capsys, "classify", "--eval", tmp_path / "only", "--out", tmp_path / "out")
    assert code == 2 and "at least two" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "score", tmp_path / "only", "--prompt", " ")
    assert code == 2 and "--prompt" in err


# ---------------------------------------------------------------- (e) evaluation on a known answer
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class ColourBackend:
    """Image embedding = mean RGB; text embedding = the RGB of the colour word in the prompt: answers are known."""

    name, identity, logit_scale = "colours", "colours-v1", 100.0

    def encode_text(self, texts):
        return torch.tensor([next(COLOURS[w] for w in COLOURS if w in t) for t in texts], dtype=torch.float32)

    def encode_images(self, images):
        return torch.tensor(np.stack([np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) for im in images]))


def test_eval_folder_metrics_and_confusion_png(tmp_path, capsys, monkeypatch):
    # true class -> colours of its images: red has one green image, blue has one red image.
    layout = {"red": ["red", "red", "green"], "green": ["green", "green"], "blue": ["blue", "red"]}
    for label, colours in layout.items():
        (tmp_path / "data" / label).mkdir(parents=True)
        for i, colour in enumerate(colours):
            Image.new("RGB", (8, 8), COLOURS[colour]).save(tmp_path / "data" / label / f"{i}.png")
    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: ColourBackend())
    code, out, err = run_cli(capsys, "classify", "--eval", tmp_path / "data", "--json", "--out", tmp_path / "out")
    assert code == 0, err
    report = json.loads(out)
    assert report["classes"] == ["blue", "green", "red"]  # sorted subfolders
    assert report["confusion"] == [[1, 0, 1], [0, 2, 0], [0, 1, 2]]
    assert report["acc@1"] == pytest.approx(5 / 7)
    assert report["acc@3"] == 1.0  # k = min(5, classes)
    assert report["mean_per_class_recall"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    with Image.open(report["confusion_png"]) as png:
        assert png.format == "PNG" and png.width > 3 * 40
    assert json.loads(open(report["report"]).read())["acc@1"] == report["acc@1"]


def test_evaluation_top_k_counts_the_true_class_anywhere_in_the_top_k():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 3.0, 2.0], [1.0, 0.0, 2.0, 3.0]])
    result = evaluation(logits, torch.tensor([0, 3, 0]), ["a", "b", "c", "d"], top_k=2)
    assert (result.accuracy, result.accuracy_top_k) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert result.class_recall == [0.5, None, None, 0.0] and result.mean_class_recall == 0.25


# ---------------------------------------------------------------- (f) the pipeline's own CLIP pair
def test_pipeline_backend_end_to_end(tiny_model_dir, tiny_pipe, image_folder, capsys):
    backend = backends.load_backend(str(tiny_model_dir))
    assert not hasattr(backend, "unet")
    texts = ["a red circle", "a blue square"]
    images = [Image.open(p).convert("RGB") for p in sorted(image_folder.iterdir())]
    with torch.inference_mode():
        assert torch.allclose(backend.encode_text(texts), tiny_pipe.encode_text(texts)[0], atol=1e-6)
        assert torch.allclose(backend.encode_images(images)[:1], tiny_pipe.embed_image(images[0]), atol=1e-5)

    code, out, err = run_cli(capsys, "classify", image_folder, "--labels", "red circle,blue square", "--top-k", "2",
                             "--json", "--clip", tiny_model_dir)
    assert code == 0, err
    for line in out.splitlines():
        record = json.loads(line)
        assert sum(p["probability"] for p in record["predictions"]) == pytest.approx(1.0)
    code, out, err = run_cli(capsys, "classify", image_folder, "--labels", "red circle,blue square", "--csv",
                             "--clip", tiny_model_dir)
    assert code == 0 and out.splitlines()[0] == "path,rank,label,probability" and len(out.splitlines()) == 3
    code, out, err = run_cli(capsys, "score", image_folder, "--prompt", "a red circle", "--json", "--clip", tiny_model_dir)
    assert code == 0 and all(0 <= json.loads(line)["clip_score"] <= 100 for line in out.splitlines())


# ---------------------------------------------------------------- (g, h) CLIP score and reranking
def test_clip_score_is_100_times_clipped_cosine():
    backend = SimpleNamespace(encode_text=lambda texts: torch.tensor([[3.0, 4.0]]),
                              encode_images=lambda images: torch.tensor([[6.0, 8.0], [4.0, -3.0], [-3.0, -4.0], [1.0, 0.0]]))
    scores = run.clip_score(backend, [None] * 4, "a prompt")
    assert scores.tolist() == pytest.approx([100.0, 0.0, 0.0, 60.0])


def fake_pipe(text_vector, image_vector_of):
    """The four CLIP components of a pipeline, as stubs with known embeddings."""
    def tokenizer(texts, **kwargs):
        return SimpleNamespace(input_ids=torch.zeros(len(texts), 4, dtype=torch.long))

    tokenizer.model_max_length = 4
    text_encoder = lambda ids: SimpleNamespace(text_embeds=torch.tensor([text_vector] * len(ids)))  # noqa: E731
    text_encoder.device = torch.device("cpu")
    image_processor = lambda images, return_tensors: SimpleNamespace(  # noqa: E731
        pixel_values=torch.tensor([image_vector_of[im.getpixel((0, 0))] for im in images]))
    image_encoder = lambda pixels: SimpleNamespace(image_embeds=pixels)  # noqa: E731
    image_encoder.dtype = torch.float32
    return SimpleNamespace(tokenizer=tokenizer, text_encoder=text_encoder, image_encoder=image_encoder,
                           image_processor=image_processor, model=SimpleNamespace(name="fake"))


def test_best_by_clip_score_picks_the_closest_image():
    vectors = {COLOURS["red"]: [1.0, 0.0, 0.0], COLOURS["green"]: [0.6, 0.8, 0.0], COLOURS["blue"]: [0.0, -1.0, 0.0]}
    pipe = fake_pipe([0.0, 1.0, 0.0], vectors)
    images = [Image.new("RGB", (4, 4), COLOURS[c]) for c in ("red", "blue", "green")]
    index, scores = run.best_by_clip_score(pipe, "anything", images)
    assert index == 2 and scores == pytest.approx([0.0, 0.0, 80.0])


def test_best_by_clip_score_uses_the_pipelines_encoders(tiny_pipe, image_folder):
    images = [Image.open(p).convert("RGB") for p in sorted(image_folder.iterdir())]
    index, scores = run.best_by_clip_score(tiny_pipe, "a red circle", images)
    with torch.inference_mode():
        text = torch.nn.functional.normalize(tiny_pipe.encode_text(["a red circle"])[0], dim=-1)
        cosines = [(torch.nn.functional.normalize(tiny_pipe.embed_image(im), dim=-1) @ text.T).item() for im in images]
    expected = [100 * max(0.0, cosine) for cosine in cosines]
    assert scores == pytest.approx(expected, abs=1e-4)
    assert index == int(np.argmax(expected))
