"""``python -m app generate "prompt" -o out.png``: images from a prompt."""
from __future__ import annotations

import argparse
import os
import sys

from app.cli.common import CLIError, add_model_options, load_engine
from app.engine.fields import kind
from app.engine.metadata import save_image
from app.engine.schedulers import sampler_names, schedule_labels
from app.engine.types import GenerationRequest, ValidationError, described
from app.engine.xyz import Plot, draw_plot, make_plot


def add_parser(subparsers) -> None:
    d = GenerationRequest.defaults()  # the defaults live in one place: the request type
    p = subparsers.add_parser("generate", help="make images from a prompt")
    p.add_argument("prompt", nargs="?", default="",
                   help="the prompt; {a|b}, {2$$a|b|c} and __wildcard__ are drawn per image from its seed")
    p.add_argument("-o", "--output", default="output.png",
                   help="image path ending in .png, .jpg, .jpeg or .webp (the settings go in the PNG text or the "
                        "EXIF UserComment, as A1111 writes them); several images get -1, -2 ... (default: output.png)")
    p.add_argument("-n", "--negative-prompt", default=d["negative_prompt"])
    p.add_argument("--width", type=int, help="multiple of 8 (default: the model's size, 768 on SD 2.1)")
    p.add_argument("--height", type=int, help="multiple of 8 (default: the model's size, 768 on SD 2.1)")
    p.add_argument("--steps", type=int, default=d["steps"], help=f"denoising steps (default: {d['steps']})")
    p.add_argument("--guidance", type=float, default=d["guidance_scale"], help=f"CFG scale (default: {d['guidance_scale']})")
    p.add_argument("--seed", type=int, help="default: random (always printed)")
    p.add_argument("--scheduler", "--sampler", default=d["scheduler"],
                   help="A1111's sampler, optionally followed by a schedule type (\"DPM++ 2M Karras\"); samplers: "
                        + ", ".join(sampler_names()) + "; schedule types: " + ", ".join(schedule_labels()))
    p.add_argument("--eta", type=float, help="eta of the ancestral, SDE and DDIM samplers (default: theirs, "
                                             "1 and 0; 0 makes Euler a into Euler)")
    _add_field_flags(p)
    p.add_argument("--num-images", type=int, default=d["num_images"])
    p.add_argument("--init-image", help="image to start from (img2img)")
    p.add_argument("--strength", type=float,
                   help=f"img2img: how much to change the init image, 0-1 (default: {d['strength']})")
    p.add_argument("--mask", help="inpainting: white repaints, black is kept (needs --init-image)")
    p.add_argument("--mask-blur", type=int, default=d["mask_blur"], help=f"pixels (default: {d['mask_blur']})")
    p.add_argument("--inpainting-fill", type=int, choices=(0, 1, 2, 3), default=d["inpainting_fill"],
                   help="masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing "
                        f"(default: {d['inpainting_fill']})")
    p.add_argument("--only-masked", action="store_true", dest="inpaint_full_res",
                   help="inpaint the masked region alone at --width x --height and paste it back")
    p.add_argument("--only-masked-padding", type=int, default=d["inpaint_full_res_padding"],
                   help=f"pixels around the region with --only-masked (default: {d['inpaint_full_res_padding']})")
    p.add_argument("--outpaint", type=int, default=d["outpaint"], metavar="PX",
                   help="extend --init-image by PX pixels and paint the new area (see --outpaint-directions)")
    p.add_argument("--outpaint-directions", default=d["outpaint_directions"],
                   help=f"sides to extend, comma-separated (default: {d['outpaint_directions']})")
    p.add_argument("--invert-mask", action="store_true", help="repaint the black area instead")
    p.add_argument("--hires", action="store_true", dest="enable_hr",
                   help="hires fix: generate at --width x --height, upscale, then refine at the larger size "
                        "(--strength is the refine pass's denoising strength)")
    p.add_argument("--hires-scale", type=float, default=d["hr_scale"], help=f"default: {d['hr_scale']:g}")
    p.add_argument("--hires-width", type=int, default=d["hr_resize_x"], help="final width instead of --hires-scale")
    p.add_argument("--hires-height", type=int, default=d["hr_resize_y"], help="final height instead of --hires-scale")
    p.add_argument("--hires-upscaler", default=d["hr_upscaler"],
                   help="Latent (and its variants), Lanczos, None, Nearest, or a model upscaler (R-ESRGAN 4x+..., "
                        "a file in --upscaler-dir)")
    p.add_argument("--upscaler-dir", help="folder of upscaler models (default: models/upscalers)")
    p.add_argument("--hires-steps", type=int, default=d["hr_second_pass_steps"],
                   help="steps of the refine pass (default: 0, as many as --steps)")
    p.add_argument("--sd-upscale", type=float, metavar="SCALE",
                   help="A1111's SD upscale (with --init-image): upscale by SCALE (1-4), then img2img in overlapping "
                        "tiles of --width x --height at --strength, blended")
    p.add_argument("--sd-upscale-overlap", type=int, default=64, help="tile overlap in pixels (default: 64)")
    p.add_argument("--sd-upscale-upscaler", default="Lanczos", help="upscaler before the tiles (default: Lanczos)")
    faces = p.add_argument_group("faces", "after generation: restoration (A1111's), then detailing (ADetailer's)")
    faces.add_argument("--restore-faces", action="store_true", help="restore faces with --face-restorer")
    faces.add_argument("--face-restorer", default=d["face_restorer"], help="CodeFormer or GFPGAN")
    faces.add_argument("--code-former-weight", type=float, default=d["code_former_weight"],
                       help="CodeFormer's w: 0 strongest, 1 most faithful (default: %(default)s)")
    faces.add_argument("--face-detail", action="store_true",
                       help="inpaint each face found again at full resolution (ADetailer)")
    faces.add_argument("--face-detail-strength", type=float, default=d["face_detail_strength"],
                       help="denoising strength of the face pass (default: %(default)s)")
    faces.add_argument("--face-detail-prompt", default=d["face_detail_prompt"], help="default: the prompt")
    faces.add_argument("--face-detail-negative-prompt", default=d["face_detail_negative_prompt"],
                       help="default: the negative prompt")
    faces.add_argument("--face-detail-confidence", type=float, default=d["face_detail_confidence"],
                       help="detector score threshold (default: %(default)s)")
    faces.add_argument("--face-dir", default=os.environ.get("T2I_FACE_DIR"),
                       help="folder of the face models, downloaded there on first use (default: $T2I_FACE_DIR, "
                            "else ~/.cache/t2i/faces)")
    p.add_argument("--save-steps", type=int, default=d["save_steps"], metavar="N",
                   help="also save a strip and a GIF of previews every N steps")
    p.add_argument("--controlnet", action="append", default=[], metavar="UNIT",
                   help="a ControlNet unit as key=value pairs, e.g. 'image=pose.png,model=NAME,module=canny,"
                        "weight=0.8,guidance_end=0.6' (the API's unit fields; image: a file; repeat for several)")
    p.add_argument("--xyz", action="append", default=[], metavar="AXIS=VALUES",
                   help="an X/Y/Z plot axis, as A1111's script: 'Steps=10-30 (+10)', 'CFG Scale=5,7', "
                        "'Prompt S/R=fox,cat', 'Sampler=Euler a,DPM++ 2M'; the first is X, then Y, then Z. "
                        "The grid (with legends) goes to --output, each cell to <output>-1, -2 ...")
    p.add_argument("--xyz-keep-seeds", action="store_true",
                   help="plot: keep -1 seeds random per cell (A1111's 'Keep -1 for seeds')")
    lines = p.add_argument_group("prompts from file (A1111's \"Prompts from file or textbox\")")
    lines.add_argument("--prompts-file", metavar="FILE",
                       help="one job per non-empty line: a prompt, or options as A1111's script reads them "
                            "(--prompt \"...\" --negative_prompt \"...\" --steps 10 --cfg_scale 5 --seed 1 ...); "
                            "a line's prompt joins the PROMPT argument; line k's images go to OUTPUT-k")
    lines.add_argument("--iterate-seed", action="store_true", help="line k gets seed + k x images (a random seed "
                                                                   "drawn once when there is none)")
    lines.add_argument("--same-seed", action="store_true", help="every line the same seed (drawn once if random)")
    lines.add_argument("--prompt-position", choices=("start", "end"), default="start",
                       help="where a line's prompt goes around PROMPT (default: start)")
    add_model_options(p)
    p.set_defaults(func=run)


def _flag_fields() -> list[str]:
    """The request fields whose flag is made from their facts (``about(cli=...)`` in app/engine/types.py)."""
    return [name for name, (_, about) in described().items() if about.cli]


def _add_field_flags(p: argparse.ArgumentParser) -> None:
    """A flag per such field: its type and default are the field's, a bool is a switch."""
    for name in _flag_fields():
        f, about = described()[name]
        if kind(f) is bool:
            p.add_argument(about.cli, action="store_true", dest=name, help=about.help)
        else:
            p.add_argument(about.cli, type=kind(f), default=f.default, dest=name, choices=about.choices or None,
                           metavar=None if about.choices else about.cli[2:].upper().replace("-", "_"), help=about.help)


def run(args: argparse.Namespace) -> int:
    from app.engine.engine import output_path

    # Checked before the model loads: bad input fails in a second, not a minute.
    if args.strength is not None and not (args.init_image or args.enable_hr):
        raise CLIError(f"strength: only applies to img2img; add --init-image (got {args.strength:g})")
    if args.mask and not args.init_image:
        raise CLIError("mask: inpainting needs the image to paint into; add --init-image")
    try:
        output = output_path(args.output)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    request = GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, width=args.width, height=args.height,
        steps=args.steps, guidance_scale=args.guidance, seed=args.seed, scheduler=args.scheduler,
        num_images=args.num_images, save_steps=args.save_steps,
        init_image=_open_image(args.init_image) if args.init_image else None,
        mask=_open_image(args.mask, "mask", keep_alpha=True) if args.mask else None, mask_blur=args.mask_blur,
        enable_hr=args.enable_hr, hr_scale=args.hires_scale, hr_resize_x=args.hires_width,
        hr_resize_y=args.hires_height, hr_upscaler=args.hires_upscaler, hr_second_pass_steps=args.hires_steps,
        outpaint=args.outpaint, outpaint_directions=args.outpaint_directions,
        inpainting_fill=args.inpainting_fill, inpaint_full_res=args.inpaint_full_res,
        inpaint_full_res_padding=args.only_masked_padding, inpainting_mask_invert=args.invert_mask,
        eta=args.eta, **{name: getattr(args, name) for name in _flag_fields()},
        restore_faces=args.restore_faces, face_restorer=args.face_restorer, code_former_weight=args.code_former_weight,
        face_detail=args.face_detail, face_detail_strength=args.face_detail_strength,
        face_detail_prompt=args.face_detail_prompt, face_detail_negative_prompt=args.face_detail_negative_prompt,
        face_detail_confidence=args.face_detail_confidence,
        controlnet=[_control_unit(i, text) for i, text in enumerate(args.controlnet)],
        **({"strength": args.strength} if args.strength is not None else {}),
        sd_upscale=None if args.sd_upscale is None else {
            "scale_factor": args.sd_upscale, "overlap": args.sd_upscale_overlap, "upscaler": args.sd_upscale_upscaler},
    )
    from app.engine import upscalers
    from app.engine.faces import weights as face_weights

    face_weights.configure(args.face_dir)  # before validating: a model missing offline is refused there
    upscalers.configure(args.upscaler_dir)
    try:
        requests = _line_requests(request, args) if args.prompts_file else [request.validate()]
        plot = _plot(args, requests[0]) if args.xyz else None
    except ValidationError as exc:
        raise CLIError(str(exc)) from exc
    if plot is not None and len(requests) > 1:
        raise CLIError("xyz: a plot takes one prompt, not --prompts-file")
    engine = load_engine(args)
    if plot is not None:
        return _run_plot(plot, engine, output)
    for k, request in enumerate(requests, 1):
        out = output if len(requests) == 1 else output.with_name(f"{output.stem}-{k}{output.suffix}")
        code = _generate(engine, request, out, args)
        if code:
            return code
    return 0


def _line_requests(request: GenerationRequest, args: argparse.Namespace) -> list[GenerationRequest]:
    """A request per line of the prompts file, each validated before the model loads."""
    from dataclasses import fields

    from app.engine.prompt_lines import line_values

    try:
        with open(args.prompts_file, encoding="utf-8-sig") as fh:
            text = fh.read()
    except OSError as exc:
        raise CLIError(f"prompts-file: cannot read {args.prompts_file!r}: {exc.strerror}") from exc
    base = {f.name: getattr(request, f.name) for f in fields(request)}
    lines = line_values(base, text, iterate_seed=args.iterate_seed, same_seed=args.same_seed,
                        position=args.prompt_position, field="prompts-file")
    return [GenerationRequest(**values).validate() for values in lines]


def _generate(engine, request: GenerationRequest, output, args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from app.engine.engine import GenerationOutOfMemory, save_result
    from app.models.loading import ModelLoadError

    out_of_memory = None
    with tqdm(total=None, desc="Generating", unit="step", file=sys.stderr) as bar:
        def on_step(info):
            bar.total = info.total
            bar.update(info.step - bar.n)

        try:
            result = engine.generate(request, on_step=on_step)
        except (ValidationError, ModelLoadError) as exc:  # ModelLoadError: a face model missing offline
            raise CLIError(str(exc)) from exc
        except GenerationOutOfMemory as exc:
            out_of_memory = exc
    if out_of_memory is not None:
        print(_out_of_memory_line(out_of_memory, args), file=sys.stderr)
        return 1
    for path, seed, image in zip(save_result(result, output), result.seeds, result.images):
        print(f"{path}  (seed {seed}, {image.width}x{image.height}, {request.steps} steps, {request.scheduler})")
    return 0


def _plot(args: argparse.Namespace, request: GenerationRequest) -> Plot:
    """The X/Y/Z plot ``--xyz`` asks for, checked before the model loads."""
    if len(args.xyz) > 3:
        raise CLIError(f"xyz: at most three axes (X, Y, Z) (got {len(args.xyz)})")
    axes = []
    for i, text in enumerate(args.xyz + ["Nothing="] * (3 - len(args.xyz))):
        kind, sep, values = text.partition("=")
        if not sep:
            raise CLIError(f"xyz: write AXIS=VALUES, e.g. 'Steps=10,20' (got {text!r})")
        if kind.strip().lower() == "checkpoint name":
            raise CLIError("xyz: the CLI runs one model; plot checkpoints on the web app or /sdapi")
        axes.append((kind.strip(), values, f"xyz[{i}]", f"xyz[{i}]"))
    return make_plot(request, axes, no_fixed_seeds=args.xyz_keep_seeds, validate=lambda r: r.validate())


def _run_plot(plot: Plot, engine, output) -> int:
    """Every cell in turn, then the grid with its legends (A1111's look)."""
    from tqdm.auto import tqdm

    from app.engine.engine import GenerationOutOfMemory

    images, texts = [], []
    with tqdm(total=len(plot.cells), desc="X/Y/Z plot", unit="cell", file=sys.stderr) as bar:
        for cell in plot.cells:
            try:
                result = engine.generate(cell.request)
            except ValidationError as exc:
                raise CLIError(str(exc)) from exc
            except GenerationOutOfMemory as exc:
                print(str(exc), file=sys.stderr)
                return 1
            images.append(result.images[0])
            texts.append(result.infotexts[0])
            bar.update(1)
    grid = draw_plot(images, plot.grid_spec())[0]
    save_image(grid, output, texts[0])
    print(f"{output}  (X/Y/Z plot, {grid.width}x{grid.height}, {len(images)} cells)")
    for n, (image, text) in enumerate(zip(images, texts)):
        path = output.with_name(f"{output.stem}-{n + 1}{output.suffix}")
        save_image(image, path, text)
        print(f"{path}  (cell {n + 1}: {', '.join(label for label in _labels(plot, n) if label)})")
    return 0


def _labels(plot: Plot, index: int) -> list[str]:
    nx, ny, _ = plot.shape
    return [plot.x.labels[index % nx], plot.y.labels[index // nx % ny], plot.z.labels[index // (nx * ny)]]


def _out_of_memory_line(exc, args: argparse.Namespace) -> str:
    """One line, no traceback: what ran out and which options to lower or add."""
    images = f"{exc.num_images} image{'s' if exc.num_images != 1 else ''}"
    lower = ["--num-images 1"] if exc.num_images > 1 else []
    lower.append("--width/--height")
    add = [flag for flag, on in (("--attention-slicing", args.attention_slicing), ("--cpu-offload", args.cpu_offload))
           if not on]
    hint = "lower " + " or ".join(lower) + (", or add " + " ".join(add) if add else "")
    return f"error: out of memory on {exc.device} making {images} at {exc.width}x{exc.height}: {hint}"


def _control_unit(index: int, text: str) -> dict:
    """``image=pose.png,model=NAME,weight=0.8`` as a unit: numbers and true/false converted, the image
    files read (the request's validation checks the rest, naming ``controlnet[i].field``)."""
    from app.engine.controlnet import UNIT_IMAGES, encode_png, parse_value

    unit: dict = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep:
            raise CLIError(f"controlnet[{index}]: {pair!r} is not key=value")
        unit[key.strip()] = parse_value(value.strip())
    for name in UNIT_IMAGES:  # files, read as the web API decodes its base64
        if name in unit:
            unit[name] = encode_png(_open_image(str(unit[name]), f"controlnet[{index}].{name}"))
    return unit


def _open_image(path: str, field: str = "init_image", keep_alpha: bool = False):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGBA") if keep_alpha and im.mode in ("RGBA", "LA", "PA", "P") else im.convert(
                "L" if keep_alpha else "RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise CLIError(f"{field}: cannot read {path!r} as an image ({exc})") from exc
