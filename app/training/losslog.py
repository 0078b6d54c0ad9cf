"""The loss log of a run: ``loss.csv`` (step, loss, lr) and ``loss.png``."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class StepLog:
    step: int
    loss: float
    lr: float


def write_loss_csv(path: Path, losses: list[StepLog]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "loss", "lr"])
        writer.writerows((log.step, repr(log.loss), repr(log.lr)) for log in losses)


def append_loss_csv(path: Path, log: StepLog) -> None:
    # Appended every step, so a crashed run still leaves its log.
    with open(path, "a", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerow((log.step, repr(log.loss), repr(log.lr)))


def read_loss_csv(path: str | Path) -> list[StepLog]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [StepLog(int(r["step"]), float(r["loss"]), float(r["lr"])) for r in csv.DictReader(fh)]


def plot_losses(losses: list[StepLog], path: str | Path, size: tuple[int, int] = (800, 400)):
    """The loss curve as a PNG, drawn with Pillow (no plotting library):
    each step's loss in light blue, a moving average in dark blue."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = size
    left, right, top, bottom = 70, 20, 36, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    values = [(log.step, log.loss) for log in losses if math.isfinite(log.loss)]
    title = "training loss"
    if values:
        title += f" (steps {values[0][0]}-{values[-1][0]}, last {values[-1][1]:.4f})"
    draw.text((left, 10), title, fill="black", font=font)
    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    if values:
        steps = [s for s, _ in values]
        ys = [v for _, v in values]
        lo, hi = min(ys), max(ys)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        s0, s1 = steps[0], max(steps[-1], steps[0] + 1)

        def point(s, v):
            x = left + (s - s0) / (s1 - s0) * (width - left - right)
            y = height - bottom - (v - lo) / (hi - lo) * (height - top - bottom)
            return x, y

        window = max(1, len(values) // 10)
        smooth = [sum(ys[max(0, i - window + 1): i + 1]) / len(ys[max(0, i - window + 1): i + 1]) for i in range(len(ys))]
        if len(values) > 1:
            draw.line([point(s, v) for s, v in values], fill=(150, 190, 240), width=1)
            draw.line([point(s, v) for s, v in zip(steps, smooth)], fill=(20, 60, 160), width=2)
        else:
            x, y = point(*values[0])
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(20, 60, 160))
        for v in (lo, (lo + hi) / 2, hi):
            _, y = point(s0, v)
            draw.text((4, y - 6), f"{v:.4g}", fill="black", font=font)
        draw.text((left, height - bottom + 6), str(s0), fill="black", font=font)
        last = str(steps[-1])
        draw.text((width - right - 8 * len(last), height - bottom + 6), last, fill="black", font=font)
        draw.text(((width - 20) // 2, height - bottom + 20), "step", fill="black", font=font)
    image.save(path)
    return image
