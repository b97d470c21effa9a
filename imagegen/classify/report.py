"""How well a zero-shot classifier does on labelled images: top-1 and top-k accuracy, mean per-class recall
(balanced accuracy: every class counts the same however many images it has), the confusion matrix, and a PNG
of that matrix drawn with PIL (rows: true class, columns: predicted class; cells shaded by the row's fraction).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

EVAL_TOP_K = 5  # acc@5, or acc@C when there are fewer than five classes

CELL = 44  # pixels per confusion-matrix cell
PAD = 8
FONT_SIZE = 14
WHITE, INK, GRID_LINE = (255, 255, 255), (20, 20, 20), (200, 200, 200)
DARKEST = (8, 48, 107)  # a full row (100% of a class's images) gets this blue
LIGHT_TEXT_FROM = 0.5  # cells darker than this row fraction get white counts


@dataclass
class EvalResult:
    classes: list[str]
    top_k: int
    accuracy: float  # acc@1
    accuracy_top_k: float
    mean_class_recall: float  # over the classes that have images
    class_recall: list[float | None]  # None for a class without images
    confusion: list[list[int]]  # confusion[true][predicted]
    images: int

    def summary(self) -> dict:
        return {"images": self.images, "classes": self.classes, "acc@1": self.accuracy,
                f"acc@{self.top_k}": self.accuracy_top_k, "mean_per_class_recall": self.mean_class_recall,
                "per_class_recall": dict(zip(self.classes, self.class_recall)), "confusion": self.confusion}


def evaluation(logits, targets, classes: list[str], top_k: int = EVAL_TOP_K) -> EvalResult:
    """Scores of logits (N, C) against true class indices (N,)."""
    import torch

    top_k = min(top_k, len(classes))
    ranked = logits.topk(top_k, dim=-1).indices  # (N, k)
    predicted = ranked[:, 0]
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
    confusion.index_put_((targets, predicted), torch.ones_like(targets), accumulate=True)
    matrix = confusion.tolist()
    recall = [row[c] / sum(row) if sum(row) else None for c, row in enumerate(matrix)]
    present = [r for r in recall if r is not None]
    images = len(targets)
    return EvalResult(
        classes=list(classes), top_k=top_k,
        accuracy=int((predicted == targets).sum()) / images,
        accuracy_top_k=int((ranked == targets[:, None]).any(dim=1).sum()) / images,
        mean_class_recall=sum(present) / len(present), class_recall=recall, confusion=matrix, images=images)


def _font(size: int = FONT_SIZE):
    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _shade(fraction: float) -> tuple[int, int, int]:
    return tuple(round(w + (d - w) * fraction) for w, d in zip(WHITE, DARKEST))


def confusion_png(result: EvalResult) -> bytes:
    """The confusion matrix as PNG bytes: class names on both axes, counts in the cells."""
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text):
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    n = len(result.classes)
    title = "rows: true class    columns: predicted class"
    line = size("Ag")[1] + PAD
    name_width = max(size(name)[0] for name in result.classes)
    left = name_width + 2 * PAD
    top = line + name_width + 2 * PAD
    width = max(left + n * CELL, size(title)[0] + 2 * PAD) + PAD
    image = Image.new("RGB", (width, top + n * CELL + PAD), WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((PAD, PAD), title, fill=INK, font=font)

    for i, name in enumerate(result.classes):
        w, h = size(name)
        y = top + i * CELL + (CELL - h) // 2
        draw.text((left - PAD - w, y), name, fill=INK, font=font)  # row label, right-aligned
        label = Image.new("L", (w + 2, h + PAD), 0)  # column label: drawn flat, turned to read bottom-up
        ImageDraw.Draw(label).text((0, 0), name, fill=255, font=font)
        label = label.rotate(90, expand=True)
        x = left + i * CELL + (CELL - label.width) // 2
        image.paste(INK, (x, top - PAD - label.height, x + label.width, top - PAD), mask=label)

    for t, row in enumerate(result.confusion):
        total = sum(row)
        for p, count in enumerate(row):
            fraction = count / total if total else 0.0
            x0, y0 = left + p * CELL, top + t * CELL
            draw.rectangle((x0, y0, x0 + CELL, y0 + CELL), fill=_shade(fraction), outline=GRID_LINE)
            w, h = size(str(count))
            colour = WHITE if fraction > LIGHT_TEXT_FROM else INK
            draw.text((x0 + (CELL - w) // 2, y0 + (CELL - h) // 2), str(count), fill=colour, font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
