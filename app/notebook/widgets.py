"""ipywidgets front end for the notebooks: a form, a Generate button, a
progress bar fed by the engine's step callback, the image, and a strip of
intermediate steps. Generation runs in the button's click handler, so a
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

from app.engine.engine import Engine, GenerationCancelled, save_result
from app.engine.previews import filmstrip
from app.engine.schedulers import scheduler_names
from app.engine.types import SIZE_MULTIPLE, GenerationRequest, GenerationResult, StepInfo, ValidationError, floor_size

if TYPE_CHECKING:
    from PIL.Image import Image

DRIVE_ROOT = Path("/content/drive/MyDrive")


def widgets_major() -> int:
    """ipywidgets' major version: Colab ships 7.7.1 (and renders only 7), Jupyter has 8."""
    import ipywidgets

    return int(ipywidgets.__version__.split(".")[0])


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


class GeneratorUI:
    """Text-to-image form. ``widget`` is what to display; ``last_result`` and
    ``saved`` hold the latest GenerationResult and the files written.

    Settings left out (None) start at GenerationRequest's defaults, the same
    as the CLI's and the web form's; width and height at the model's size."""

    mode = "txt2img"

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
        self.scheduler = w.Dropdown(options=scheduler_names(), value=defaults["scheduler"], description="Scheduler")
        self.save_steps = w.BoundedIntText(value=defaults["save_steps"], min=0, max=limits.max_steps,
                                           description="Steps strip", **tooltip("keep a preview every N steps (0: off)"))
        self.button = w.Button(description="Generate", button_style="primary", icon="paint-brush")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="Progress")
        self.status = w.HTML()
        self.image = w.Image(format="png", layout=w.Layout(max_width="768px"))
        self.strip = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.last_result: GenerationResult | None = None
        self.saved: list[Path] = []
        self.button.on_click(self._on_click)
        self.widget = w.VBox([
            self.prompt, self.negative, *self._extra_widgets(),
            w.HBox([self.steps, self.guidance, self.seed]),
            w.HBox([self.width, self.height, self.scheduler]),
            w.HBox([self.save_steps, self.button]),
            self.progress, self.status, self.image, self.strip,
        ])

    def _extra_widgets(self) -> list[Any]:
        return []

    def request(self) -> GenerationRequest:
        return GenerationRequest(
            prompt=self.prompt.value, negative_prompt=self.negative.value, steps=self.steps.value,
            guidance_scale=self.guidance.value, seed=self.seed.value, width=self.width.value,
            height=self.height.value, scheduler=self.scheduler.value, save_steps=self.save_steps.value,
        )

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


def _escape(text: str) -> str:
    import html

    return html.escape(text)
