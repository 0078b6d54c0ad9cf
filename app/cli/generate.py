"""``python -m app generate "prompt" -o out.png``: images from a prompt."""
from __future__ import annotations

import argparse
import sys

from app.cli.common import CLIError, add_model_options, load_engine
from app.engine.schedulers import scheduler_names
from app.engine.types import GenerationRequest, ValidationError


def add_parser(subparsers) -> None:
    d = GenerationRequest.defaults()  # the defaults live in one place: the request type
    p = subparsers.add_parser("generate", help="make images from a prompt")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", default="output.png", help="PNG path; several images get -1, -2 ... (default: output.png)")
    p.add_argument("-n", "--negative-prompt", default=d["negative_prompt"])
    p.add_argument("--width", type=int, help="multiple of 8 (default: the model's size, 768 on SD 2.1)")
    p.add_argument("--height", type=int, help="multiple of 8 (default: the model's size, 768 on SD 2.1)")
    p.add_argument("--steps", type=int, default=d["steps"], help=f"denoising steps (default: {d['steps']})")
    p.add_argument("--guidance", type=float, default=d["guidance_scale"], help=f"CFG scale (default: {d['guidance_scale']})")
    p.add_argument("--seed", type=int, help="default: random (always printed)")
    p.add_argument("--scheduler", default=d["scheduler"], help="one of: " + ", ".join(scheduler_names()))
    p.add_argument("--num-images", type=int, default=d["num_images"])
    p.add_argument("--init-image", help="image to start from (img2img)")
    p.add_argument("--strength", type=float, default=d["strength"],
                   help=f"img2img: how much to change the init image, 0-1 (default: {d['strength']})")
    p.add_argument("--tiling", action="store_true", help="seamless: the image tiles left/right and top/bottom")
    p.add_argument("--save-steps", type=int, default=d["save_steps"], metavar="N",
                   help="also save a strip and a GIF of previews every N steps")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from app.engine.engine import save_result

    request = GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, width=args.width, height=args.height,
        steps=args.steps, guidance_scale=args.guidance, seed=args.seed, scheduler=args.scheduler,
        num_images=args.num_images, strength=args.strength, save_steps=args.save_steps, tiling=args.tiling,
        init_image=_open_image(args.init_image) if args.init_image else None,
    )
    try:
        request.validate()  # before the model loads: bad input fails in a second, not a minute
    except ValidationError as exc:
        raise CLIError(str(exc)) from exc
    engine = load_engine(args)
    with tqdm(total=None, desc="Generating", unit="step", file=sys.stderr) as bar:
        def on_step(info):
            bar.total = info.total
            bar.update(info.step - bar.n)

        try:
            result = engine.generate(request, on_step=on_step)
        except ValidationError as exc:
            raise CLIError(str(exc)) from exc
    for path, seed in zip(save_result(result, args.output), result.seeds):
        print(f"{path}  (seed {seed}, {result.width}x{result.height}, {request.steps} steps, {request.scheduler})")
    return 0


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise CLIError(f"init_image: cannot read {path!r} as an image ({exc})") from exc
