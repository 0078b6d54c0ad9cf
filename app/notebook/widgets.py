"""ipywidgets front end for the notebooks: a form, a Generate button, a
progress bar fed by the engine's step callback, the image, a strip of
intermediate steps and an Upscale button for the last result. The
text-to-image form has the hires fix; the simple fields with facts (a CLI flag, app/engine/fields.py)
get their widgets in "Advanced settings" from those facts; the inpainting form takes its mask
as an upload (ipywidgets has no drawing canvas). Generation runs in the button's click handler, so a
headless run can press the button with ``button.click()`` and get real files.

The engine does the work; this module only converts widget values to a
GenerationRequest and the result to files and pictures.
"""
from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine import upscalers
from app.engine.controlnet import encode_png
from app.engine.engine import Engine, GenerationCancelled, save_result
from app.engine.faces.restore import RESTORERS
from app.engine.fields import About, kind
from app.engine.hires import hr_upscalers
from app.engine.inpaint import FILL_MODES
from app.engine.metadata import save_image
from app.engine.preprocessors import MODULES
from app.engine.previews import filmstrip
from app.engine.schedulers import sampler_names, schedule_labels
from app.engine.types import (
    FIELD_RANGES,
    SIZE_MULTIPLE,
    GenerationRequest,
    GenerationResult,
    StepInfo,
    ValidationError,
    described,
    field_range,
    floor_size,
)
from app.engine.upscale import MAX_FACTOR, upscale

if TYPE_CHECKING:
    from PIL.Image import Image

DRIVE_ROOT = Path("/content/drive/MyDrive")


def widgets_major() -> int:
    """ipywidgets' major version: Colab ships 7.7.1 (and renders only 7), Jupyter has 8."""
    import ipywidgets

    return int(ipywidgets.__version__.split(".")[0])


def bounds(field: str) -> dict[str, float]:
    """A widget's min and max: the request field's range (app.engine.types.FIELD_RANGES)."""
    low, high = field_range(field)
    return {"min": low, "max": high}


def tooltip(text: str) -> dict[str, str]:
    """The hover text argument: ``tooltip`` in ipywidgets 8, ``description_tooltip`` in 7."""
    return {"tooltip" if widgets_major() >= 8 else "description_tooltip": text}


def uploaded_files(value: Any) -> list[bytes]:
    """The contents of a FileUpload's ``value``: in ipywidgets 8 a tuple of
    dicts with ``content`` (a memoryview), in 7 a dict of file name to
    ``{"metadata": ..., "content": bytes}``."""
    files = value.values() if isinstance(value, dict) else value
    return [bytes(f["content"]) for f in files or ()]


def output_folder(requested: str | os.PathLike | None = None, *, drive_root: Path = DRIVE_ROOT,
                  subfolder: str = "text-to-image") -> Path:
    """Where images go: ``requested`` if given, else Google Drive when it is
    mounted (files survive the Colab session), else ./outputs."""
    if requested:
        folder = Path(requested).expanduser()
    elif drive_root.is_dir():
        folder = drive_root / subfolder
    else:
        folder = Path("outputs")
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def unique_path(folder: Path, stem: str, suffix: str = ".png") -> Path:
    path = folder / f"{stem}{suffix}"
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}{suffix}"
        n += 1
    return path


def _png(image: Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def fact_fields() -> dict[str, tuple[type, Any, About]]:
    """The request's simple fields whose facts give them a flag (``about(cli=...)``): a number, a flag or
    a choice with a default a widget can hold (not None), each with its plain type and default. Their widgets
    are made from the facts, so a new such field appears in the form with no edit here."""
    return {name: (kind(f), f.default, about) for name, (f, about) in described().items()
            if about.cli and isinstance(f.default, (int, float, bool, str))}


class FactWidgets:
    """The form's "Advanced settings" (closed at first): one widget per ``fact_fields()`` field, its label
    the infotext's, its bounds the field's range (FIELD_RANGES), its tooltip the flag's help; read back into
    the request by name. The fields with a real UI (prompt, size, sampler, images, ControlNet) keep theirs."""

    def __init__(self) -> None:
        import ipywidgets as w

        self.inputs: dict[str, Any] = {}
        for name, (type_, default, about) in fact_fields().items():
            common = {"value": default, "description": about.label or name.replace("_", " ").capitalize(),
                      **tooltip(about.help), "style": {"description_width": "initial"}}
            if about.choices:
                widget = w.Dropdown(options=list(about.choices), **common)
            elif type_ is bool:
                widget = w.Checkbox(indent=False, **common)
            elif type_ is str:
                widget = w.Text(**common)
            elif span := about.range or FIELD_RANGES.get(name):  # its own, or its feature's check's
                low, high = span
                widget = (w.BoundedIntText if type_ is int else w.BoundedFloatText)(min=low, max=high, **common)
            else:
                widget = (w.IntText if type_ is int else w.FloatText)(**common)
            self.inputs[name] = widget
        rows = [w.HBox(list(self.inputs.values())[i:i + 3]) for i in range(0, len(self.inputs), 3)]
        self.widget = w.Accordion(children=[w.VBox(rows)], selected_index=None)
        self.widget.set_title(0, "Advanced settings")

    def fill(self, request: GenerationRequest) -> None:
        for name, widget in self.inputs.items():
            setattr(request, name, widget.value)


class ControlNetWidgets:
    """The form's ControlNet tab: one unit (a control image upload, preprocessor, model, weight,
    guidance start/end), sent as the request's ``controlnet`` units when "Use ControlNet" is ticked.
    The models are the engine's (its ControlNet folder; ``demo-controlnet`` on the demo model)."""

    def __init__(self, engine: Engine):
        import ipywidgets as w

        self.image: Image | None = None  # set by the upload or code; None: the img2img picture
        self.enabled = w.Checkbox(value=False, description="Use ControlNet", indent=False)
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="Control image")
        self.preview = w.Image(format="png", layout=w.Layout(max_width="256px"))
        self.module = w.Dropdown(options=[(m.label, m.name) for m in MODULES.values()], value="canny",
                                 description="Preprocessor")
        store = getattr(engine, "controlnets", None)
        names = store.names() if store is not None else []
        self.model = w.Dropdown(options=names or ["None"], description="Model",
                                **tooltip("ControlNets in the ControlNet folder (CONTROLNET_DIR)"))
        self.weight = w.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="Weight")
        self.guidance = w.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.05, description="Start/end",
                                           **tooltip("the fraction of the steps the unit guides"))
        self.upload.observe(self._on_upload, names="value")
        body = w.VBox([w.HBox([self.enabled, self.upload]), w.HBox([self.module, self.model]),
                       w.HBox([self.weight, self.guidance]), self.preview])
        self.widget = w.Accordion(children=[body])
        self.widget.set_title(0, "ControlNet")

    def set_image(self, image: Image) -> None:
        self.image = image.convert("RGB")
        self.preview.value = _png(self.image)
        self.enabled.value = True

    def _on_upload(self, change: dict[str, Any]) -> None:
        from PIL import Image

        files = uploaded_files(change["new"])
        if files:
            self.set_image(Image.open(io.BytesIO(files[0])))

    def units(self) -> list[dict]:
        if not self.enabled.value:
            return []
        start, end = self.guidance.value
        unit = {"module": self.module.value, "model": self.model.value, "weight": self.weight.value,
                "guidance_start": start, "guidance_end": end}
        if self.image is not None:
            unit["image"] = encode_png(self.image)
        return [unit]


class GeneratorUI:
    """Text-to-image form. ``widget`` is what to display; ``last_result`` and
    ``saved`` hold the latest GenerationResult and the files written,
    ``upscaled`` the files the Upscale button wrote.

    Settings left out (None) start at GenerationRequest's defaults, the same
    as the CLI's and the web form's; width and height at the model's size."""

    mode = "txt2img"
    offers_hires = True  # A1111 has the hires fix on its txt2img tab only

    def __init__(self, engine: Engine, output_dir: str | os.PathLike, *, steps: int | None = None,
                 width: int | None = None, height: int | None = None, guidance: float | None = None):
        import ipywidgets as w

        defaults = GenerationRequest.defaults()
        self.engine = engine
        self.output_dir = Path(output_dir)
        default_w, default_h = engine.default_size
        limits = engine.limits
        layout = w.Layout(width="95%")
        self.prompt = w.Textarea(description="Prompt", placeholder="a watercolor fox in a snowy forest",
                                 layout=layout)
        self.negative = w.Textarea(value=defaults["negative_prompt"], description="Negative",
                                   placeholder="blurry, low quality", layout=layout)
        self.steps = w.BoundedIntText(value=defaults["steps"] if steps is None else steps, min=1,
                                      max=limits.max_steps, description="Steps")
        self.guidance = w.BoundedFloatText(value=defaults["guidance_scale"] if guidance is None else guidance,
                                           min=0, max=limits.max_guidance, step=0.5, description="Guidance")
        # -1 stands for the request's None (a random seed): IntText cannot hold None.
        self.seed = w.IntText(value=-1 if defaults["seed"] is None else defaults["seed"], description="Seed",
                              **tooltip("-1: random"))
        self.width = w.BoundedIntText(value=width or default_w, min=limits.min_size, max=limits.max_width,
                                      step=SIZE_MULTIPLE, description="Width")
        self.height = w.BoundedIntText(value=height or default_h, min=limits.min_size, max=limits.max_height,
                                       step=SIZE_MULTIPLE, description="Height")
        # The page's words and lists: A1111's samplers and schedule types (app/engine/schedulers.py).
        self.scheduler = w.Dropdown(options=sampler_names(), value=defaults["scheduler"], description="Sampler")
        self.schedule_type = w.Dropdown(options=schedule_labels(), value="Automatic", description="Schedule type")
        self.save_steps = w.BoundedIntText(value=defaults["save_steps"], min=0, max=limits.max_steps,
                                           description="Steps strip", **tooltip("keep a preview every N steps (0: off)"))
        self.button = w.Button(description="Generate", button_style="primary", icon="paint-brush")
        # The hires fix: a second img2img pass at a larger size (strength is its denoising strength).
        self.enable_hr = w.Checkbox(value=defaults["enable_hr"], description="Hires fix", indent=False)
        self.hr_scale = w.BoundedFloatText(value=defaults["hr_scale"], **bounds("hr_scale"), step=0.25,
                                           description="Upscale by")
        self.hr_upscaler = w.Dropdown(options=hr_upscalers(), value=defaults["hr_upscaler"],
                                      description="Upscaler")
        self.hr_steps = w.BoundedIntText(value=defaults["hr_second_pass_steps"], min=0, max=limits.max_steps,
                                         description="Hires steps", **tooltip("0: as many as Steps"))
        self.hr_strength = w.FloatSlider(value=defaults["strength"], min=0.05, max=1.0, step=0.05,
                                         description="Denoising")
        # Faces, after generation (app/engine/faces): A1111's restoration, ADetailer's detailing.
        self.restore_faces = w.Checkbox(value=defaults["restore_faces"], description="Restore faces", indent=False)
        self.face_restorer = w.Dropdown(options=list(RESTORERS), value=defaults["face_restorer"],
                                        description="Restorer")
        self.code_former_weight = w.FloatSlider(value=defaults["code_former_weight"], **bounds("code_former_weight"),
                                                step=0.05, description="CodeFormer w")
        self.face_detail = w.Checkbox(value=defaults["face_detail"], description="Face detail", indent=False)
        self.face_detail_strength = w.FloatSlider(value=defaults["face_detail_strength"],
                                                  **bounds("face_detail_strength"), step=0.05,
                                                  description="Face denoise")
        self.controlnet = ControlNetWidgets(engine)
        self.advanced = FactWidgets()
        self.upscale_by = w.BoundedFloatText(value=2.0, min=1.0, max=MAX_FACTOR, step=0.5, description="Upscale x",
                                             **tooltip("upscale of the last result, saved next to it"))
        self.upscaler = w.Dropdown(options=upscalers.names(), value="Lanczos", description="with",
                                   **tooltip("Lanczos, or a model (R-ESRGAN 4x+... download on first use; files "
                                             "in the upscaler folder by name)"))
        self.upscale_button = w.Button(description="Upscale last result", icon="expand")
        self.upscaled: list[Path] = []
        self.progress = w.IntProgress(value=0, min=0, max=1, description="Progress")
        self.status = w.HTML()
        self.image = w.Image(format="png", layout=w.Layout(max_width="768px"))
        self.strip = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.last_result: GenerationResult | None = None
        self.saved: list[Path] = []
        self.button.on_click(self._on_click)
        self.upscale_button.on_click(lambda _b: self.upscale_last())
        hires = ([w.HBox([self.enable_hr, self.hr_scale, self.hr_upscaler]), w.HBox([self.hr_steps, self.hr_strength])]
                 if self.offers_hires else [])
        self.widget = w.VBox([
            self.prompt, self.negative, *self._extra_widgets(),
            w.HBox([self.steps, self.guidance, self.seed]),
            w.HBox([self.width, self.height]),
            w.HBox([self.scheduler, self.schedule_type]),
            *hires,
            w.HBox([self.restore_faces, self.face_restorer, self.code_former_weight]),
            w.HBox([self.face_detail, self.face_detail_strength]),
            self.advanced.widget,
            self.controlnet.widget,
            w.HBox([self.save_steps, self.button]),
            self.progress, self.status, self.image, self.strip,
            w.HBox([self.upscale_by, self.upscaler, self.upscale_button]),
        ])

    def sampler_value(self) -> str:
        """The request's one string: the sampler, then the schedule type unless Automatic."""
        schedule = self.schedule_type.value
        return self.scheduler.value if schedule == "Automatic" else f"{self.scheduler.value} {schedule}"

    def _extra_widgets(self) -> list[Any]:
        return []

    def request(self) -> GenerationRequest:
        request = GenerationRequest(
            prompt=self.prompt.value, negative_prompt=self.negative.value, steps=self.steps.value,
            guidance_scale=self.guidance.value, seed=self.seed.value, width=self.width.value,
            height=self.height.value, scheduler=self.sampler_value(), save_steps=self.save_steps.value,
            restore_faces=self.restore_faces.value, face_restorer=self.face_restorer.value,
            code_former_weight=self.code_former_weight.value, face_detail=self.face_detail.value,
            face_detail_strength=self.face_detail_strength.value, controlnet=self.controlnet.units(),
        )
        self.advanced.fill(request)
        if self.offers_hires and self.enable_hr.value:
            request.enable_hr, request.hr_scale = True, self.hr_scale.value
            request.hr_upscaler, request.hr_second_pass_steps = self.hr_upscaler.value, self.hr_steps.value
            request.strength = self.hr_strength.value
        return request

    def upscale_last(self) -> list[Path]:
        """Every image of the last result, upscaled by ``upscale_by`` with ``upscaler`` and
        saved next to it with its settings (and the upscale's) inside."""
        result = self.last_result
        if result is None:
            self.status.value = "Generate an image first."
            return []
        factor, name = self.upscale_by.value, self.upscaler.value
        try:
            bigger = [upscale(image, scale=factor, upscaler=name, limits=self.engine.limits) for image in result.images]
        except ValidationError as exc:
            self.status.value = f"<b style='color:#b00'>{_escape(str(exc))}</b>"
            return []
        paths = []
        for image, seed, text in zip(bigger, result.seeds, result.infotexts):
            path = unique_path(self.output_dir, f"{time.strftime('%Y%m%d-%H%M%S')}-upscale-{seed}")
            paths.append(save_image(image, path, f"{text}, Postprocess upscale by: {factor:g}, "
                                                 f"Postprocess upscaler: {name}"))
        self.upscaled = paths
        self.image.value = _png(bigger[0])
        self.status.value = f"Upscaled to {bigger[0].width}x{bigger[0].height}. Saved {_escape(str(paths[0]))}"
        return paths

    def _on_step(self, info: StepInfo) -> None:
        self.progress.max, self.progress.value = info.total, info.step
        self.progress.description = f"{info.step}/{info.total}"
        # A cheap latent preview (about 1 ms), not a VAE decode.
        self.image.value = _png(self.engine.preview(info.latents, max_side=256)[0])

    def _on_click(self, _button: Any = None) -> None:
        self.generate()

    def generate(self) -> list[Path]:
        """Run the form's request, show the image and save it. Errors are
        shown in the status line (they name the field and the value)."""
        self.button.disabled = True
        self.progress.value = 0
        self.status.value = "Generating..."
        try:
            request = self.request()
            result = self.engine.generate(request, on_step=self._on_step)
        except ValidationError as exc:
            self.status.value = f"<b style='color:#b00'>{_escape(str(exc))}</b>"
            return []
        except GenerationCancelled as exc:
            self.status.value = _escape(str(exc))
            return []
        finally:
            self.button.disabled = False
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{self.mode}-{result.seeds[0]}"
        paths = save_result(result, unique_path(self.output_dir, stem))
        self.last_result, self.saved = result, paths
        self.image.value = _png(result.images[0])
        if result.step_images:
            self.strip.value = _png(filmstrip(result.step_images[0] + [result.images[0]]))
        self.status.value = (f"Seed {result.seeds[0]}, {result.width}x{result.height}, "
                             f"{result.seconds:.1f} s. Saved {_escape(str(paths[0]))}")
        return paths


class Img2ImgUI(GeneratorUI):
    """Image-to-image: the same form plus an upload, a strength slider and a
    button that takes the text-to-image tab's last picture."""

    mode = "img2img"
    offers_hires = False

    def __init__(self, engine: Engine, output_dir: str | os.PathLike, *, source: GeneratorUI | None = None,
                 strength: float | None = None, **kwargs: Any):
        import ipywidgets as w

        self.source = source
        self.init_image: Image | None = None  # set by the upload, the button or code
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="Upload")
        self.use_last = w.Button(description="Use last result", disabled=source is None)
        if strength is None:
            strength = GenerationRequest.defaults()["strength"]
        self.strength = w.FloatSlider(value=strength, min=0.05, max=1.0, step=0.05, description="Strength")
        self.init_preview = w.Image(format="png", layout=w.Layout(max_width="256px"))
        super().__init__(engine, output_dir, **kwargs)
        self.upload.observe(self._on_upload, names="value")
        self.use_last.on_click(lambda _b: self.take_last())

    def sampler_value(self) -> str:
        """The request's one string: the sampler, then the schedule type unless Automatic."""
        schedule = self.schedule_type.value
        return self.scheduler.value if schedule == "Automatic" else f"{self.scheduler.value} {schedule}"

    def _extra_widgets(self) -> list[Any]:
        import ipywidgets as w

        return [w.HBox([self.upload, self.use_last, self.strength]), self.init_preview]

    def set_init_image(self, image: Image) -> None:
        self.init_image = image.convert("RGB")
        self.init_preview.value = _png(self.init_image)
        # Keep the picture's size (rounded down to a multiple of SIZE_MULTIPLE) unless the user changes it.
        self.width.value = max(self.width.min, floor_size(image.width))
        self.height.value = max(self.height.min, floor_size(image.height))

    def take_last(self) -> None:
        if self.source is None or self.source.last_result is None:
            self.status.value = "Generate an image in the text-to-image form first."
            return
        self.set_init_image(self.source.last_result.images[0])

    def _on_upload(self, change: dict[str, Any]) -> None:
        from PIL import Image

        files = uploaded_files(change["new"])
        if files:
            self.set_init_image(Image.open(io.BytesIO(files[0])))

    def request(self) -> GenerationRequest:
        if self.init_image is None:
            raise ValidationError("init_image", None, "upload a picture or press 'Use last result' first")
        request = super().request()
        request.init_image, request.strength = self.init_image, self.strength.value
        return request


class InpaintUI(Img2ImgUI):
    """Inpainting: the image-to-image form plus a mask upload (white repaints,
    black keeps; ipywidgets has no drawing canvas, so the mask is a picture
    made elsewhere), mask blur, masked content, only masked (with its
    padding) and invert."""

    mode = "inpaint"

    def __init__(self, engine: Engine, output_dir: str | os.PathLike, **kwargs: Any):
        import ipywidgets as w

        defaults = GenerationRequest.defaults()
        self.mask: Image | None = None  # set by the upload or code
        self.mask_upload = w.FileUpload(accept="image/*", multiple=False, description="Mask")
        self.mask_preview = w.Image(format="png", layout=w.Layout(max_width="256px"))
        self.mask_blur = w.IntSlider(value=defaults["mask_blur"], **bounds("mask_blur"),
                                     description="Mask blur")
        self.fill = w.Dropdown(options=[(label, value) for value, label in FILL_MODES.items()],
                               value=defaults["inpainting_fill"], description="Masked content")
        self.only_masked = w.Checkbox(value=defaults["inpaint_full_res"], description="Only masked", indent=False,
                                      **tooltip("repaint the masked area alone at full size, then paste it back"))
        self.padding = w.BoundedIntText(value=defaults["inpaint_full_res_padding"],
                                        **bounds("inpaint_full_res_padding"), description="Padding")
        self.invert = w.Checkbox(value=defaults["inpainting_mask_invert"], description="Invert mask", indent=False,
                                 **tooltip("repaint the black area instead"))
        super().__init__(engine, output_dir, **kwargs)
        self.mask_upload.observe(self._on_mask_upload, names="value")

    def sampler_value(self) -> str:
        """The request's one string: the sampler, then the schedule type unless Automatic."""
        schedule = self.schedule_type.value
        return self.scheduler.value if schedule == "Automatic" else f"{self.scheduler.value} {schedule}"

    def _extra_widgets(self) -> list[Any]:
        import ipywidgets as w

        return [*super()._extra_widgets(), w.HBox([self.mask_upload, self.mask_blur, self.fill]),
                w.HBox([self.only_masked, self.padding, self.invert]), self.mask_preview]

    def set_mask(self, image: Image) -> None:
        self.mask = image.convert("L")
        self.mask_preview.value = _png(self.mask)

    def _on_mask_upload(self, change: dict[str, Any]) -> None:
        from PIL import Image

        files = uploaded_files(change["new"])
        if files:
            self.set_mask(Image.open(io.BytesIO(files[0])))

    def request(self) -> GenerationRequest:
        request = super().request()
        if self.mask is None:
            raise ValidationError("mask", None, "upload a mask: white repaints, black keeps")
        request.mask, request.mask_blur, request.inpainting_fill = self.mask, self.mask_blur.value, self.fill.value
        request.inpaint_full_res, request.inpaint_full_res_padding = self.only_masked.value, self.padding.value
        request.inpainting_mask_invert = self.invert.value
        return request


def _escape(text: str) -> str:
    import html

    return html.escape(text)
