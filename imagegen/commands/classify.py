"""`imagegen classify`: the CLIP pair as a zero-shot classifier, or its accuracy on a labelled folder (--eval)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError
from .clip_options import add_clip_arguments, check_batch_size
from .registry import command


def add_classify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", metavar="IMAGES_OR_FOLDERS", help="image files and folders (walked recursively)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", help="class names, comma-separated: 'red circle,blue square'")
    labels.add_argument("--labels-file", metavar="FILE", help="class names, one per line")
    prompts = p.add_mutually_exclusive_group()
    prompts.add_argument("--templates", metavar="FILE",
                         help="prompt templates, one per line, each with {} for the class name (default: a built-in "
                              "ensemble such as 'a photo of a {}.')")
    prompts.add_argument("--cupl", metavar="FILE.json",
                         help="CuPL prompts, a JSON object {class name: [prompt, ...]}; without labels its keys are the classes")
    p.add_argument("--top-k", type=int, default=1, help="labels shown per image, best first (default 1)")
    p.add_argument("--eval", metavar="FOLDER",
                   help="measure acc@1, acc@5 and mean per-class recall on FOLDER (one subfolder of images per class)")
    p.add_argument("--out", default="outputs/classify", metavar="FOLDER",
                   help="where --eval writes its confusion-matrix PNG and JSON report (default outputs/classify)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object per image (with --eval: the report)")
    output.add_argument("--csv", action="store_true", help="CSV rows: path, rank, label, probability")
    add_clip_arguments(p)


def classify_prompts(args, labels: list[str] | None):
    """(class names, templates or CuPL prompts) from --labels/--labels-file and --templates/--cupl."""
    from ..classify import zeroshot

    if args.cupl:
        return zeroshot.read_cupl_file(args.cupl, labels)
    if labels is None:
        raise UserError("no labels: give --labels 'red circle,blue square', --labels-file FILE or --cupl FILE.json")
    from ..locations import existing_or_shipped

    templates = (zeroshot.read_templates_file(existing_or_shipped(args.templates)) if args.templates
                 else zeroshot.DEFAULT_TEMPLATES)
    return labels, templates


@command("classify", "zero-shot CLIP classification of images, or its accuracy on a labelled folder (--eval)", add_classify_arguments)
def run_classify(args) -> int:
    from ..classify import zeroshot

    check_batch_size(args)
    if args.eval:
        return run_classify_eval(args)
    if not args.images:
        raise UserError("no images given: pass image files or folders (or --eval FOLDER)")
    if args.top_k < 1:
        raise UserError(f"--top-k must be a whole number >= 1, got {args.top_k}")
    labels = (zeroshot.read_labels_file(args.labels_file) if args.labels_file
              else zeroshot.parse_labels(args.labels) if args.labels is not None else None)
    labels, templates = classify_prompts(args, labels)

    from ..classify.run import classify, collect_images

    files = collect_images(args.images, args.skip_bad)

    from ..classify.backends import load_backend

    backend = load_backend(args.clip, args.checkpoint, args.device)
    predictions = classify(backend, files, labels, templates, args.top_k, args.batch_size, args.skip_bad)
    if args.json:
        for p in predictions:
            print(json.dumps({**p.as_dict(), "clip": backend.name}))
    elif args.csv:
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "rank", "label", "probability"])
        for p in predictions:
            for rank, (label, probability) in enumerate(zip(p.labels, p.probabilities), 1):
                writer.writerow([p.path, rank, label, f"{probability:.6f}"])
    else:
        width = max([len("IMAGE")] + [len(p.path) for p in predictions])
        print(f"{'IMAGE':<{width}}  {'PROB':>6}  LABEL")
        for p in predictions:
            for rank, (label, probability) in enumerate(zip(p.labels, p.probabilities)):
                print(f"{p.path if rank == 0 else '':<{width}}  {probability:6.1%}  {label}")
    return 0


def run_classify_eval(args) -> int:
    from ..png import check_writable_folder, write_new_file

    if args.images or args.labels or args.labels_file:
        raise UserError("--eval takes its classes from the subfolders of FOLDER; give no images or labels with it")
    if args.csv:
        raise UserError("--eval reports as text or --json, not --csv")
    check_writable_folder(args.out)

    from ..classify.run import evaluate, labelled_images

    classes, files, targets = labelled_images(args.eval, args.skip_bad)
    _, templates = classify_prompts(args, classes)

    from ..classify.backends import load_backend
    from ..classify.report import confusion_png

    backend = load_backend(args.clip, args.checkpoint, args.device)
    result = evaluate(backend, classes, files, targets, templates, args.batch_size, args.skip_bad)
    png = write_new_file(Path(args.out) / "confusion.png", confusion_png(result))
    report = {**result.summary(), "folder": str(args.eval), "clip": backend.name, "confusion_png": str(png),
              "templates": templates if isinstance(templates, dict) else list(templates)}
    report_path = write_new_file(Path(args.out) / "classify-eval.json", json.dumps(report, indent=2).encode())
    if args.json:
        print(json.dumps({**report, "report": str(report_path)}))
        return 0
    print(f"{result.images} images, {len(classes)} classes, CLIP {backend.name}")
    print(f"  acc@1                  {result.accuracy:6.1%}")
    print(f"  acc@{result.top_k:<18} {result.accuracy_top_k:6.1%}")
    print(f"  mean per-class recall  {result.mean_class_recall:6.1%}")
    print(f"confusion matrix: {png}\nreport:           {report_path}")
    return 0
