"""Captioned image folders for fine-tuning.

Three caption layouts are read:

- a CSV with a header naming an image column and a caption column
  (``image,caption``; also ``file_name,text`` as in Hugging Face image folders);
- Flickr8k's ``captions.txt``: the same CSV, five rows per image;
- Flickr8k's older ``Flickr8k.token.txt``: ``1000268201_693b08cb0e.jpg#0<TAB>caption``.

Every image is opened once before training starts, so a missing image, an
empty caption or an unreadable file becomes a counted skip up front, never a
crash in the middle of a run.
"""
from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# Looked for in --data, in this order, when --captions is not given.
CAPTION_FILE_NAMES = ("captions.txt", "captions.csv", "metadata.csv", "Flickr8k.token.txt")
IMAGE_COLUMNS = ("image", "file_name", "filename", "file", "path")
CAPTION_COLUMNS = ("caption", "text", "prompt")
# Flickr8k keeps images in a subfolder whose name depends on where it came from.
IMAGE_SUBFOLDERS = ("Images", "images", "Flicker8k_Dataset", "Flickr8k_Dataset")
_TOKEN_SUFFIX = re.compile(r"#\d+$")

MISSING_IMAGE = "missing image"
EMPTY_CAPTION = "empty caption"
UNREADABLE_IMAGE = "unreadable image"
BAD_ROW = "bad row"


class DatasetError(ValueError):
    """The data cannot be used at all; the message names the file."""


@dataclass(frozen=True)
class Example:
    image: Path
    caption: str


@dataclass
class Skips:
    """Rows left out, counted by reason, with a few examples to show the user."""

    counts: Counter = field(default_factory=Counter)
    rows: list[tuple[int, str, str]] = field(default_factory=list)  # (line, image, reason)

    def add(self, line: int, image: str, reason: str) -> None:
        self.counts[reason] += 1
        self.rows.append((line, image, reason))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items())) or "none"

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["line", "image", "reason"])
            writer.writerows(self.rows)


@dataclass
class CaptionData:
    source: Path  # the captions file
    examples: list[Example]
    skips: Skips
    num_rows: int

    @property
    def num_images(self) -> int:
        return len({e.image for e in self.examples})


def find_captions_file(data_dir: str | Path, captions: str | Path | None = None) -> Path:
    """The captions file: ``captions`` if given (absolute, or inside ``data_dir``), else auto-detected."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"data: no such folder: {str(data_dir)!r}")
    if captions:
        path = Path(captions)
        if not path.is_absolute() and not path.exists():
            path = data_dir / path
        if not path.is_file():
            raise DatasetError(f"captions: no such file: {str(captions)!r}")
        return path
    for name in CAPTION_FILE_NAMES:
        if (data_dir / name).is_file():
            return data_dir / name
    csvs = sorted(data_dir.glob("*.csv"))
    if len(csvs) == 1:
        return csvs[0]
    found = f"; it has {len(csvs)} .csv files, name one with --captions" if csvs else ""
    raise DatasetError(f"captions: no captions file in {str(data_dir)!r} (looked for "
                       f"{', '.join(CAPTION_FILE_NAMES)} or a single .csv){found}")


def read_caption_rows(path: Path) -> tuple[list[tuple[int, str, str]], Skips]:
    """``(line, image name, caption)`` rows of a captions file in any supported layout."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"captions: cannot read {str(path)!r} ({exc})") from exc
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    skips = Skips()
    if "\t" in first and _TOKEN_SUFFIX.search(first.split("\t", 1)[0]):
        return _read_token_layout(lines, skips), skips
    return _read_csv_layout(lines, path, skips), skips


def _read_token_layout(lines: list[str], skips: Skips) -> list[tuple[int, str, str]]:
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name, sep, caption = line.partition("\t")
        if not sep:
            skips.add(number, line[:80], BAD_ROW)
            continue
        rows.append((number, _TOKEN_SUFFIX.sub("", name.strip()), caption))
    return rows


def _read_csv_layout(lines: list[str], path: Path, skips: Skips) -> list[tuple[int, str, str]]:
    records = list(csv.reader(lines))
    header = [c.strip().lower() for c in records[0]] if records else []
    image_col = next((header.index(c) for c in IMAGE_COLUMNS if c in header), None)
    caption_col = next((header.index(c) for c in CAPTION_COLUMNS if c in header), None)
    start = 2
    if image_col is None or caption_col is None:
        if header and any(c in header for c in IMAGE_COLUMNS + CAPTION_COLUMNS):
            raise DatasetError(f"captions: {str(path)!r} needs an image column ({'/'.join(IMAGE_COLUMNS)}) "
                               f"and a caption column ({'/'.join(CAPTION_COLUMNS)}); its header is {records[0]!r}")
        image_col, caption_col, start = 0, 1, 1  # no header: image,caption
    width = len(header) if start == 2 else 2
    rows = []
    # csv.reader joins quoted multi-line fields, so line numbers are approximate there.
    for number, record in enumerate(records[start - 1 :], start=start):
        if not any(c.strip() for c in record):
            continue
        if len(record) <= max(image_col, caption_col):
            skips.add(number, ",".join(record)[:80], BAD_ROW)
            continue
        caption = record[caption_col]
        if caption_col == width - 1 and len(record) > width:
            caption = ",".join(record[caption_col:])  # an unquoted comma inside the last column
        rows.append((number, record[image_col].strip(), caption))
    return rows


def load_caption_data(data_dir: str | Path, captions: str | Path | None = None, *,
                      check_images: bool = True) -> CaptionData:
    """Read and check a captioned image folder. Bad rows are counted in
    ``skips``; no usable row at all is a DatasetError naming the captions file."""
    data_dir = Path(data_dir)
    source = find_captions_file(data_dir, captions)
    rows, skips = read_caption_rows(source)
    search = _image_folders(data_dir, source)
    checked: dict[Path, bool] = {}
    examples = []
    for number, name, caption in rows:
        caption = " ".join(caption.split())
        if not name:
            skips.add(number, name, BAD_ROW)
            continue
        if not caption:
            skips.add(number, name, EMPTY_CAPTION)
            continue
        image = _resolve_image(name, search)
        if image is None:
            skips.add(number, name, MISSING_IMAGE)
            continue
        if check_images:
            if image not in checked:
                checked[image] = can_read_image(image)
            if not checked[image]:
                skips.add(number, name, UNREADABLE_IMAGE)
                continue
        examples.append(Example(image, caption))
    if not examples:
        raise DatasetError(f"captions: no usable rows in {str(source)!r} ({len(rows)} rows read; "
                           f"skipped: {skips.summary()})")
    return CaptionData(source=source, examples=examples, skips=skips, num_rows=len(rows) + skips.counts[BAD_ROW])


def _image_folders(data_dir: Path, source: Path) -> list[Path]:
    folders = [source.parent, data_dir] + [data_dir / sub for sub in IMAGE_SUBFOLDERS]
    unique = []
    for folder in folders:
        if folder.is_dir() and folder not in unique:
            unique.append(folder)
    return unique


def _resolve_image(name: str, folders: list[Path]) -> Path | None:
    path = Path(name)
    if path.is_absolute():
        return path if path.is_file() else None
    for folder in folders:
        if (folder / path).is_file():
            return folder / path
    return None


def can_read_image(path: Path) -> bool:
    """Decode the whole file (a truncated JPEG passes ``verify()``)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (64, 64))  # JPEG: decode at reduced size, far faster
            im.load()
        return True
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


def load_image(path: Path, size: int):
    """RGB image, shorter side resized to ``size`` then centre-cropped to ``size`` x ``size``."""
    from PIL import Image

    with Image.open(path) as opened:
        opened.draft("RGB", (size, size))
        im = opened.convert("RGB")
    w, h = im.size
    scale = size / min(w, h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((rw, rh), Image.Resampling.BICUBIC)
    left, top = (rw - size) // 2, (rh - size) // 2
    return im.crop((left, top, left + size, top + size))


def image_to_tensor(image):
    """PIL RGB -> float tensor (3, H, W) in [-1, 1], the VAE's input range."""
    import numpy as np
    import torch

    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
