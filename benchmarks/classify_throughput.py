"""Zero-shot classification throughput, measured side by side in one run on the same open_clip model and images:

  imagegen's classify path   imagegen.classify.run.classify(backend, files, labels): files checked, the classifier
                             read from the zero-shot cache, images read and preprocessed (a batch ahead on a worker
                             thread when torch leaves a core free), encoded, softmax and top-k
  a plain open_clip loop     for each batch: open + preprocess every file, model.encode_image, normalise, matmul
                             with open_clip's build_zero_shot_classifier weights (built once, outside the timing)

Reported: images/s of each (median over alternating repeats) and their ratio, imagegen / plain (goal >= 1.0).
The model is an open_clip architecture with random weights (loaded through `--clip open_clip:ARCH --checkpoint`),
by default a small custom ViT; `--arch ViT-B-32` measures a full-size one. The images are shapes-world renders.
Run alone (other jobs on the cores distort it):  python benchmarks/classify_throughput.py [--repeats 5]
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from imagegen.classify.backends import load_backend, quiet_logging  # noqa: E402
from imagegen.classify.run import classify  # noqa: E402
from imagegen.classify.zeroshot import DEFAULT_TEMPLATES  # noqa: E402
from imagegen.data import shapes  # noqa: E402

SMALL_ARCH = "imagegen-bench-small-clip"
SMALL_CONFIG = {  # a small ViT: big enough that the forward pass is not free, quick to build
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "head_width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}
LABELS = [f"{colour} {shape}" for colour in shapes.COLOUR_NAMES for shape in shapes.SHAPES]


def plain_open_clip(model, preprocess, classifier, files, batch_size):
    """The loop one writes with open_clip alone: top-1 label index per image."""
    predictions = []
    with torch.no_grad():
        for start in range(0, len(files), batch_size):
            batch = files[start:start + batch_size]
            pixels = torch.stack([preprocess(Image.open(f).convert("RGB")) for f in batch])
            features = F.normalize(model.encode_image(pixels), dim=-1)
            predictions += (100.0 * features @ classifier).softmax(dim=-1).argmax(dim=-1).tolist()
    return predictions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=SMALL_ARCH, help=f"open_clip architecture (default: {SMALL_ARCH}, built in)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="classify-bench-"))
    try:
        return measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args, work: Path) -> int:
    os.environ["IMAGEGEN_CACHE"] = str(work / "cache")
    if args.arch == SMALL_ARCH:
        (work / f"{SMALL_ARCH}.json").write_text(json.dumps(SMALL_CONFIG))
        open_clip.add_model_config(work / f"{SMALL_ARCH}.json")
    torch.manual_seed(0)
    with quiet_logging():
        model, _, preprocess = open_clip.create_model_and_transforms(args.arch)
    model.eval()
    checkpoint = work / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, checkpoint)
    tokenizer = open_clip.get_tokenizer(args.arch)
    classifier = open_clip.build_zero_shot_classifier(model, tokenizer, LABELS, DEFAULT_TEMPLATES)
    backend = load_backend(f"open_clip:{args.arch}", str(checkpoint))

    images, _, _ = shapes.generate(seed=12345, n=args.images)
    files = []
    for i, pixels in enumerate(images):
        files.append(work / "images" / f"{i:05d}.png")
        files[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(files[-1])

    def run_imagegen():
        return [LABELS.index(p.labels[0]) for p in classify(backend, files, LABELS, DEFAULT_TEMPLATES,
                                                            batch_size=args.batch_size, progress=False)]

    def run_plain():
        return plain_open_clip(model, preprocess, classifier, files, args.batch_size)

    agree = run_imagegen() == run_plain()  # also warms up both paths and fills the zero-shot cache
    seconds = {"imagegen": [], "plain": []}
    for _ in range(args.repeats):
        for name, fn in (("imagegen", run_imagegen), ("plain", run_plain)):
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    rate = {name: len(files) / statistics.median(values) for name, values in seconds.items()}
    ratio = rate["imagegen"] / rate["plain"]
    print(f"arch {args.arch}, {len(files)} images {images.shape[1]}x{images.shape[2]}, batch {args.batch_size}, "
          f"{args.repeats} repeats, {args.threads} torch threads; same top-1 labels: {agree}")
    for name in ("imagegen", "plain"):
        print(f"  {name:<9} {rate[name]:8.1f} images/s  (median of {', '.join(f'{s:.3f}' for s in seconds[name])} s)")
    print(f"RESULT classify throughput imagegen/plain_open_clip = {ratio:.3f} "
          f"({rate['imagegen']:.1f} vs {rate['plain']:.1f} images/s; goal >= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
