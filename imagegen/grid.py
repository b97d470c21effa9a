"""Contact sheets: one row per prompt, one column per seed, the prompt written at the left (PIL only)."""
from __future__ import annotations

LABEL_WIDTH = 260
PADDING = 4
BACKGROUND, INK = (255, 255, 255), (20, 20, 20)


def prompt_grid(rows: list[tuple[str, list]], tile: int = 128):
    """rows: (label, images) pairs -> one PIL image; images are scaled to `tile` pixels without smoothing."""
    from PIL import Image, ImageDraw

    columns = max(len(images) for _, images in rows)
    width = LABEL_WIDTH + columns * (tile + PADDING) + PADDING
    height = len(rows) * (tile + PADDING) + PADDING
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for r, (label, images) in enumerate(rows):
        top = PADDING + r * (tile + PADDING)
        draw.multiline_text((PADDING, top + PADDING), _wrap(label, 40), fill=INK)
        for c, image in enumerate(images):
            sheet.paste(image.resize((tile, tile), Image.NEAREST), (LABEL_WIDTH + PADDING + c * (tile + PADDING), top))
    return sheet


def _wrap(text: str, width: int) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])
