"""PNG figures drawn with torchvision's image utilities and PIL (no plotting library).

* :func:`labelled_grid` - a grid of image cells (``torchvision.utils.make_grid``) with row
  labels on the left and column labels on top: the input-gradient pictures.
* :func:`line_chart` - accuracy (%) against categorical x values, one line per series, with
  axes, ticks, grid lines and a legend: the robustness curve.

Both return a ``PIL.Image`` (RGB); :func:`save_png` writes one atomically.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid

from igam.run.files import atomic_write

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GRID_GREY = (225, 225, 225)
# distinguishable line colours (Tableau 10), one per series in order
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
FONT_SIZE = 13
MARGIN = 6  # pixels between a label and what it labels


def font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    """PIL's built-in font at ``size`` pixels (Pillow >= 10.1 with FreeType), else its fixed
    small bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, fnt) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=fnt)
    return right - left, bottom - top


def labelled_grid(cells: torch.Tensor, nrow: int, row_labels: Sequence[str],
                  col_labels: Sequence[str], scale: int = 3, padding: int = 2) -> Image.Image:
    """A labelled grid of image cells.

    Args:
        cells: (R * C, 3, H, W) float in [0, 1], row-major (row r, column c at r * C + c).
        nrow: C, the number of cells per row (``make_grid``'s ``nrow``).
        row_labels: R labels, drawn right-aligned left of each row.
        col_labels: C labels, drawn centred above each column.
        scale: integer upscaling of each cell (nearest neighbour, so pixels stay visible).
        padding: white pixels between cells and around the grid.
    Returns:
        RGB image: the ``make_grid`` picture of the upscaled cells (white padding) in its
        bottom-right corner, the label margins left and above it (white).
    """
    n = cells.shape[0]
    rows = -(-n // nrow)
    if len(row_labels) != rows or len(col_labels) != nrow:
        raise ValueError(f"{rows} rows x {nrow} columns need as many labels, got "
                         f"{len(row_labels)} row and {len(col_labels)} column labels")
    big = F.interpolate(cells.detach().float().cpu().clamp(0, 1), scale_factor=scale,
                        mode="nearest")
    grid = to_pil_image(make_grid(big, nrow=nrow, padding=padding, pad_value=1.0))
    fnt = font()
    probe = ImageDraw.Draw(grid)
    left = max(_text_size(probe, t, fnt)[0] for t in row_labels) + 2 * MARGIN
    top = max(_text_size(probe, t, fnt)[1] for t in col_labels) + 2 * MARGIN
    canvas = Image.new("RGB", (left + grid.width, top + grid.height), WHITE)
    canvas.paste(grid, (left, top))
    draw = ImageDraw.Draw(canvas)
    cell_h, cell_w = big.shape[2] + padding, big.shape[3] + padding
    for r, text in enumerate(row_labels):
        w, _ = _text_size(draw, text, fnt)
        cy = top + padding + r * cell_h + big.shape[2] // 2
        draw.text((left - MARGIN - w, cy), text, fill=BLACK, font=fnt, anchor="lm")
    for c, text in enumerate(col_labels):
        cx = left + padding + c * cell_w + big.shape[3] // 2
        draw.text((cx, top - MARGIN), text, fill=BLACK, font=fnt, anchor="ms")
    return canvas


def line_chart(x_labels: Sequence[str], series: Mapping[str, Sequence[float | None]],
               title: str = "", x_title: str = "", y_title: str = "accuracy (%)",
               size: tuple[int, int] = (640, 420), y_max: float = 100.0, y_min: float = 0.0,
               max_x_labels: int | None = None,
               ranges: Mapping[str, Sequence[tuple[float, float] | None]] | None = None,
               ) -> Image.Image:
    """Lines over categorical x positions (equally spaced, labelled ``x_labels``).

    Args:
        x_labels: the x tick labels, left to right.
        series: name -> one y value per x label (on the scale ``y_min``..``y_max``; None: no
            value there, the line has a gap); drawn as a line with round markers in the next
            :data:`PALETTE` colour, named in the legend.
        size: (width, height) of the picture in pixels.
        max_x_labels: label at most about this many x ticks (every k-th; None: all).
        ranges: name -> one (low, high) per x label or None, drawn as a vertical whisker in
            the series' colour (e.g. the lowest and highest of repeated runs around their mean);
            an empty range (low == high) draws nothing.
    Returns:
        RGB image with y ticks every ``(y_max - y_min) / 5``, light horizontal grid lines,
        the x and y axis titles, the title on top and the legend in the upper right corner of
        the plot.
    """
    if len(series) > len(PALETTE):
        raise ValueError(f"at most {len(PALETTE)} series, got {len(series)}")
    for name, ys in series.items():
        if len(ys) != len(x_labels):
            raise ValueError(f"series {name!r} has {len(ys)} values for {len(x_labels)} x labels")
    width, height = size
    img = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(img)
    fnt = font()
    _, th = _text_size(draw, "0", fnt)
    x0, x1 = 56 + th, width - 16                       # plot area
    y0, y1 = 16 + (th + MARGIN if title else 0), height - 2 * th - 3 * MARGIN - 8
    if title:
        draw.text((width // 2, 8), title, fill=BLACK, font=fnt, anchor="mt")
    span = (y_max - y_min) or 1.0
    for k in range(6):                                  # y ticks and grid lines
        value = y_min + span * k / 5
        y = y1 - (y1 - y0) * k / 5
        draw.line([(x0, y), (x1, y)], fill=GRID_GREY if k else BLACK, width=1)
        draw.line([(x0 - 4, y), (x0, y)], fill=BLACK, width=1)
        draw.text((x0 - 4 - MARGIN, y), f"{value:g}", fill=BLACK, font=fnt, anchor="rm")
    draw.line([(x0, y0), (x0, y1)], fill=BLACK, width=1)
    n = len(x_labels)
    inset = (x1 - x0) / (2 * n) if n else 0

    def px(i: int) -> float:
        return x0 + inset + (x1 - x0 - 2 * inset) * (i / (n - 1) if n > 1 else 0.5)

    def py(v: float) -> float:
        return y1 - (y1 - y0) * (min(max(v, y_min), y_max) - y_min) / span

    every = max(1, -(-n // max_x_labels)) if max_x_labels else 1
    for i, label in enumerate(x_labels):               # x ticks
        if i % every:
            continue
        draw.line([(px(i), y1), (px(i), y1 + 4)], fill=BLACK, width=1)
        draw.text((px(i), y1 + 4 + MARGIN), label, fill=BLACK, font=fnt, anchor="mt")
    if x_title:
        draw.text(((x0 + x1) // 2, height - 6), x_title, fill=BLACK, font=fnt, anchor="mb")
    if y_title:                                         # rotated y-axis title
        tw, _ = _text_size(draw, y_title, fnt)
        label = Image.new("RGB", (tw + 4, th + 6), WHITE)
        ImageDraw.Draw(label).text((2, 0), y_title, fill=BLACK, font=fnt)
        label = label.rotate(90, expand=True)
        img.paste(label, (4, int((y0 + y1) / 2 - label.height / 2)))
    dot = 3 if n <= 60 else 1
    for k, (name, colour) in enumerate(zip(series, PALETTE)):  # whiskers under the lines
        shift = 2 * dot * (k - (len(series) - 1) / 2)  # side by side where series meet
        for i, r in enumerate((ranges or {}).get(name) or []):
            if r is not None and r[0] != r[1]:
                x = px(i) + shift
                draw.line([(x, py(r[0])), (x, py(r[1]))], fill=colour, width=1)
                for v in r:
                    draw.line([(x - 3, py(v)), (x + 3, py(v))], fill=colour, width=1)
    for ys, colour in zip(series.values(), PALETTE):
        runs: list[list[tuple[float, float]]] = [[]]   # stretches without a gap
        for i, v in enumerate(ys):
            if v is None or v != v:                     # None or NaN: a gap
                runs.append([])
            else:
                runs[-1].append((px(i), py(v)))
        for points in runs:
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for x, y in points:
                draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=colour)
    if series:                                          # legend, upper right
        names = list(series)
        lw = max(_text_size(draw, t, fnt)[0] for t in names) + 34
        lh = len(names) * (th + MARGIN) + MARGIN
        lx, ly = x1 - lw - 8, y0 + 8
        draw.rectangle([lx, ly, lx + lw, ly + lh], fill=WHITE, outline=BLACK)
        for k, (name, colour) in enumerate(zip(names, PALETTE)):
            cy = ly + MARGIN + k * (th + MARGIN) + th / 2
            draw.line([(lx + 6, cy), (lx + 24, cy)], fill=colour, width=2)
            draw.text((lx + 30, cy), name, fill=BLACK, font=fnt, anchor="lm")
    return img


def save_png(img: Image.Image, path: str | Path) -> Path:
    """Write ``img`` as a PNG at ``path`` atomically (parent folders created); return path."""
    path = Path(path)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with atomic_write(path, "wb", encoding=None) as fh:
        fh.write(buf.getvalue())
    return path
