"""``python -m app upscale in.png -o out.png --scale 2 [--upscaler "R-ESRGAN 4x+"]``: any image upscaled
with Lanczos or a model upscaler (app/engine/upscalers)."""
from __future__ import annotations

import argparse
import sys

from app.cli.common import CLIError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("upscale", help="upscale an image with Lanczos or a model (by a factor or to a size)")
    p.add_argument("image")
    p.add_argument("-o", "--output", default="upscaled.png")
    p.add_argument("--scale", type=float, help="factor (default: 2 unless --width/--height)")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--no-crop", action="store_true",
                   help="with both --width and --height: stretch instead of crop to fit")
    p.add_argument("--upscaler", default="Lanczos",
                   help="Lanczos, Nearest, an A1111 name (R-ESRGAN 4x+, ESRGAN_4x, SwinIR 4x...: downloaded on "
                        "first use) or a model file's name in --upscaler-dir")
    p.add_argument("--upscaler-dir", help="folder of upscaler models (default: models/upscalers)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    from app.engine import upscalers
    from app.engine.metadata import read_parameters, save_image
    from app.engine.types import ValidationError
    from app.engine.upscale import upscale

    try:
        with Image.open(args.image) as im:
            im.load()
            text = read_parameters(im)
            source = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise CLIError(f"image: cannot read {args.image!r} as an image ({exc})") from exc
    upscalers.configure(args.upscaler_dir)
    try:
        out = upscale(source, args.scale, args.width, args.height, crop=not args.no_crop, upscaler=args.upscaler,
                      progress=lambda done, total: print(f"tile {done}/{total}", file=sys.stderr, flush=True))
    except ValidationError as exc:
        raise CLIError(str(exc)) from exc
    save_image(out, args.output, text)  # the settings it was made with travel along, as in A1111's extras
    print(f"{args.output}  ({source.width}x{source.height} -> {out.width}x{out.height})")
    return 0
