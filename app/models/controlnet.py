"""ControlNet models: found by name in the ControlNet folder, or by Hub id, loaded
once and kept in a small LRU so that a T4 holds the base model and two
ControlNets at most.

- a diffusers folder (``config.json`` + weights) in the folder: by its name;
- a single ``.safetensors`` file in the folder (the original layout, as
  ``thibaud/controlnet-sd21`` and Civitai publish them, or diffusers'): by its
  stem, with the config beside it (``NAME.yaml``, as the extension reads one),
  else the extension's ``cldm_v21.yaml`` or ``cldm_v15.yaml`` by the width of
  the weights' text conditioning (1024 or 768). diffusers alone would fetch an
  SD 1.5 config from the Hub for every file;
- a Hub id (``thibaud/controlnet-sd21-canny-diffusers``), downloaded on first
  use; offline, a ModelLoadError says which model and where to put it;
- ``demo-controlnet``: a ControlNet made from the demo model's UNet
  (``ControlNetModel.from_unet``, random zero-convs made non-zero), for
  tests and the demo server.

The kind (canny, depth, openpose ...) is read from the name, as the
extension guesses a unit's control type from the model name.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from app.models.devices import Placement, free_memory
from app.models.loading import ModelLoadError

logger = logging.getLogger(__name__)

DEMO_CONTROLNET = "demo-controlnet"
KINDS = ("canny", "depth", "openpose", "scribble", "lineart", "hed", "softedge", "color", "ade20k", "seg",
         "normal", "mlsd", "tile", "inpaint", "shuffle")
KEEP = 2  # ControlNets kept loaded (an SD 2.1 ControlNet is ~700 MB in fp16)
HUB_FAMILY = tuple(f"thibaud/controlnet-sd21-{k}-diffusers" for k in
                   ("canny", "depth", "hed", "openpose", "scribble", "lineart", "color", "ade20k", "zoedepth"))


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind in KINDS:
        if kind in lowered:
            return kind
    return "unknown"


def list_models(folder: str | os.PathLike | None) -> list[str]:
    """The ControlNets in ``folder``: diffusers folders and .safetensors files, by name (sorted)."""
    if not folder or not Path(folder).is_dir():
        return []
    names = []
    for entry in Path(folder).iterdir():
        if entry.is_dir() and (entry / "config.json").is_file():
            names.append(entry.name)
        elif entry.is_file() and entry.suffix.lower() == ".safetensors":
            names.append(entry.stem)
    return sorted(names, key=str.lower)


def resolve(name: str, folder: str | os.PathLike | None) -> Path | None:
    """The local folder or file a model name stands for; None if not local."""
    if not folder:
        return None
    base = Path(folder)
    for candidate in (base / name, base / f"{name}.safetensors"):
        if candidate.exists() and candidate.resolve().parent == base.resolve():
            return candidate
    return None


def _is_hub_id(name: str) -> bool:
    """owner/name, and not a path on this machine (from_pretrained would load a local folder of that name:
    a request must not reach folders outside the ControlNet folder)."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/")) and not Path(name).exists()


class ControlNetStore:
    """Loaded ControlNets by name, least recently used dropped past ``keep``."""

    def __init__(self, folder: str | os.PathLike | None, placement: Placement, demo_unet: Any = None,
                 keep: int = KEEP):
        self.folder = str(folder) if folder else None
        self.placement = placement
        self.demo_unet = demo_unet  # the demo model's UNet: what demo-controlnet is made from
        self.keep = keep
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        found = list_models(self.folder)
        return ([DEMO_CONTROLNET] if self.demo_unet is not None else []) + found

    def loaded(self) -> list[str]:
        return list(self._loaded)

    def get(self, name: str) -> Any:
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            model = self._load(name)
            self._loaded[name] = model
            while len(self._loaded) > self.keep:
                dropped, _ = self._loaded.popitem(last=False)
                logger.info("ControlNet %s unloaded (keeping %d)", dropped, self.keep)
                free_memory(self.placement.device)
            return model

    def add(self, name: str, model: Any) -> None:
        """A ControlNet built in memory (the benchmark's, from the loaded UNet), kept like a loaded one."""
        with self._lock:
            self._loaded[name] = model.to(self.placement.device, self.placement.torch_dtype).eval()
            self._loaded.move_to_end(name)

    def clear(self) -> None:
        """Drop every loaded ControlNet (after an out-of-memory error)."""
        with self._lock:
            self._loaded.clear()
        free_memory(self.placement.device)

    def _load(self, name: str) -> Any:
        from diffusers import ControlNetModel

        if name == DEMO_CONTROLNET and self.demo_unet is not None:
            model = demo_controlnet(self.demo_unet)
        else:
            path = resolve(name, self.folder)
            if path is not None and path.is_dir():
                model = ControlNetModel.from_pretrained(str(path), local_files_only=True)
            elif path is not None:
                model = _from_single_file(path)
            elif _is_hub_id(name):
                try:
                    model = ControlNetModel.from_pretrained(name)
                except OSError as exc:
                    raise ModelLoadError(
                        f"ControlNet {name!r} could not be downloaded ({str(exc).splitlines()[0][:160]}); "
                        f"download it and put its folder in the ControlNet folder ({self.folder or 'CONTROLNET_DIR'})"
                    ) from exc
            else:
                raise ModelLoadError(f"no ControlNet {name!r} in the ControlNet folder "
                                     f"({self.folder or 'none set: CONTROLNET_DIR'}); see /controlnet/model_list")
        model = model.to(self.placement.device, self.placement.torch_dtype)
        model.eval()
        logger.info("ControlNet %s loaded", name)
        return model


def _ldm_config(context_dim: int, linear: bool, heads: dict) -> dict:
    """An original-layout ControlNet config (the shape of ControlNet's cldm YAML files) for an SD UNet."""
    params = dict(image_size=32, in_channels=4, hint_channels=3, model_channels=320, attention_resolutions=[4, 2, 1],
                  num_res_blocks=2, channel_mult=[1, 2, 4, 4], use_spatial_transformer=True, transformer_depth=1,
                  context_dim=context_dim, use_linear_in_transformer=linear, legacy=False, **heads)
    return {"model": {"params": {
        "control_stage_config": {"params": params},
        "unet_config": {"params": {k: v for k, v in params.items() if k != "hint_channels"} | {"out_channels": 4}},
        "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}}}}


# The extension's models/cldm_v21.yaml and cldm_v15.yaml, as dicts: SD 2.x ControlNets have 64-channel heads
# and linear projections, SD 1.x ones 8 heads and convolutions.
CLDM_V21 = _ldm_config(1024, True, {"num_head_channels": 64})
CLDM_V15 = _ldm_config(768, False, {"num_heads": 8})


def original_config(path: Path) -> dict:
    """The config of a single-file ControlNet: ``NAME.yaml`` beside it, else SD 2.x's or SD 1.x's by the
    width of its cross-attention keys (read from the file's header, no weights loaded)."""
    sidecar = path.with_suffix(".yaml")
    if sidecar.is_file():
        import yaml

        with open(sidecar, encoding="utf-8") as stream:
            loaded = yaml.safe_load(stream)
        if not isinstance(loaded, dict) or "control_stage_config" not in loaded.get("model", {}).get("params", {}):
            raise ModelLoadError(f"{sidecar.name} is not a ControlNet config (model.params.control_stage_config)")
        return loaded
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            key = next((k for k in weights.keys() if k.endswith("attn2.to_k.weight")), None)
            width = weights.get_slice(key).get_shape()[-1] if key else None
    except Exception as exc:  # not a safetensors file after all
        raise ModelLoadError(f"ControlNet file {path.name} could not be read: {exc}") from exc
    if width == 1024:
        return CLDM_V21
    if width == 768:
        return CLDM_V15
    raise ModelLoadError(f"ControlNet file {path.name}: its cross-attention width is {width}, neither SD 2.x's "
                         f"(1024) nor SD 1.x's (768); put its config beside it as {sidecar.name}")


def diffusers_config(original: dict) -> dict:
    """ControlNetModel's config for an original-layout config (what diffusers' own mapping would give; its
    ``original_config=`` path for ControlNets fails in diffusers 0.42, and without it diffusers fetches an
    SD 1.5 config from the Hub)."""
    params = original["model"]["params"]["control_stage_config"]["params"]
    mult, channels = list(params["channel_mult"]), int(params["model_channels"])
    attention = set(params["attention_resolutions"])
    levels = [2 ** i for i in range(len(mult))]  # the downsampling factor at each level
    if "num_head_channels" in params and params["num_head_channels"] != -1:
        heads: Any = [channels * m // params["num_head_channels"] for m in mult]
    else:
        heads = params["num_heads"]
    return {"conditioning_channels": params.get("hint_channels", 3), "in_channels": params["in_channels"],
            "down_block_types": ["CrossAttnDownBlock2D" if ds in attention else "DownBlock2D" for ds in levels],
            "block_out_channels": [channels * m for m in mult], "layers_per_block": params["num_res_blocks"],
            "cross_attention_dim": params["context_dim"], "attention_head_dim": heads,
            "use_linear_projection": bool(params.get("use_linear_in_transformer", False)),
            "transformer_layers_per_block": params.get("transformer_depth", 1)}


def _from_single_file(path: Path) -> Any:
    import json
    import tempfile

    from diffusers import ControlNetModel

    with tempfile.TemporaryDirectory() as folder:
        config = dict(diffusers_config(original_config(path)), _class_name="ControlNetModel")
        (Path(folder) / "config.json").write_text(json.dumps(config))
        return ControlNetModel.from_single_file(str(path), config=folder, local_files_only=True)


def demo_controlnet(unet: Any, seed: int = 0) -> Any:
    """A ControlNet shaped for the demo UNet, its encoder copied from it (``from_unet``), its zero
    convolutions given small random weights so that it changes the picture (a real one learns them)."""
    import torch
    from diffusers import ControlNetModel

    model = ControlNetModel.from_unet(unet)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        zero_convs = [*model.controlnet_down_blocks, model.controlnet_mid_block,
                      model.controlnet_cond_embedding.conv_out]
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.05)
    return model.float()


DEPTH_MODEL = "LiheYoung/depth-anything-small-hf"  # the depth_anything preprocessor's weights (Hub id or folder)
_depth: dict[str, Any] = {}
_depth_lock = threading.Lock()


def depth_model(name: str | None = None) -> Any:
    """The depth preprocessor's model (transformers' AutoModelForDepthEstimation), loaded once, on the GPU
    when there is one, as the other preprocessors' networks (a preprocessor runs once per request); offline without it,
    a ModelLoadError says where to put it."""
    name = name or DEPTH_MODEL
    with _depth_lock:
        if name not in _depth:
            from transformers import AutoModelForDepthEstimation

            try:
                model = AutoModelForDepthEstimation.from_pretrained(name)
            except OSError as exc:
                raise ModelLoadError(f"the depth preprocessor's model {name!r} could not be loaded "
                                     f"({str(exc).splitlines()[0][:160]}); download it on a machine with internet "
                                     "access (it is fetched on first use)") from exc
            from app.models.annotators import device

            _depth.clear()  # one depth model at a time
            _depth[name] = model.eval().to(device())
        return _depth[name]
