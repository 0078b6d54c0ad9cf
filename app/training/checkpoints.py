"""Training checkpoints: ``OUT/checkpoints/step-N``, each all a resumed run needs to go on as an
uninterrupted one would (the trained weights, the optimizer, the schedule, the loss scaler, the
random state and the loss log), written atomically, pruned to the newest ``keep_checkpoints``,
found by ``--resume``, checked against the run's options and read back without unpickling code.

The trainer (app/training/trainer.py) hands its pieces over as a ``RunState``; nothing here
loads a model or trains."""
from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.engine.types import ValidationError
from app.training.config import RESUME_KEYS, TrainConfig
from app.training.losslog import StepLog

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    """What a checkpoint saves of a run, and restores into it."""
    model: Any  # the trained module: the text encoder, or the UNet with its LoRA layers
    names: list[str]  # its trainable parameters: the only weights saved
    optimizer: Any
    lr_scheduler: Any
    scaler: Any | None  # fp16's loss scaler; None in fp32 and bf16


@dataclass
class Resumed:
    step: int
    losses: list[StepLog]
    resolution: int  # the run's size, also when it came from the model's default


def save_checkpoint(out: Path, step: int, run: RunState, losses: list[StepLog], config: TrainConfig,
                    resolution: int, examples: int) -> Path:
    """Write ``checkpoints/step-N`` atomically (a crash mid-save keeps the previous one), then
    prune the old ones."""
    import torch
    from safetensors.torch import save_file

    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    named = dict(run.model.named_parameters())
    save_file({n: named[n].detach().to("cpu", copy=True).contiguous() for n in run.names},
              str(tmp / "trainable.safetensors"))
    torch.save(run.optimizer.state_dict(), tmp / "optimizer.pt")
    state = {
        "step": step,
        "lr_scheduler": run.lr_scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "losses": [asdict(log) for log in losses],
        "config": {k: getattr(config, k) for k in RESUME_KEYS},
        "resolution": resolution,
        "examples": examples,
    }
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    prune_checkpoints(out, config.keep_checkpoints)
    return final


def prune_checkpoints(out: Path, keep: int | None) -> None:
    """Delete all but the newest ``keep`` checkpoints (none deleted when ``keep`` is 0 or None)."""
    if keep:
        for old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def check_resume(folder: Path, config: TrainConfig) -> None:
    """Before the model loads: the options that fix the data order and the noise must match."""
    state = load_state(folder / "state.pt")
    for key, saved in state["config"].items():
        ours = getattr(config, key)
        if saved != ours and not (key == "resolution" and ours is None):
            raise ValidationError(key.replace("_", "-"), ours, f"differs from the checkpoint {str(folder)!r}, "
                                  f"which used {saved!r}; a resumed run must use the same value")
    if state["step"] >= config.steps:
        raise ValidationError("steps", config.steps, f"is not more than the checkpoint's step "
                              f"{state['step']}; raise --steps to train further")


def load_checkpoint(folder: Path, run: RunState, device: Any, examples: int) -> Resumed:
    """Restore ``run`` (weights, optimizer, schedule, scaler) and the random state from ``folder``."""
    import torch
    from safetensors.torch import load_file

    state = load_state(folder / "state.pt")
    if state["examples"] != examples:
        logger.warning("the checkpoint saw %d usable examples, this data has %d: the order will differ",
                       state["examples"], examples)
    weights = load_file(str(folder / "trainable.safetensors"))
    missing = set(run.names) - set(weights)
    if missing:
        raise ValidationError("resume", str(folder), f"has no weights for {sorted(missing)[:3]}")
    named = dict(run.model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            named[name].copy_(tensor)
    run.optimizer.load_state_dict(load_state(folder / "optimizer.pt", map_location=device))
    run.lr_scheduler.load_state_dict(state["lr_scheduler"])
    if run.scaler is not None and state["scaler"]:
        run.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return Resumed(state["step"], [StepLog(**log) for log in state["losses"]], state["resolution"])


def load_state(path: Path, map_location: Any = "cpu") -> dict:
    """A checkpoint's ``state.pt`` or ``optimizer.pt``, read with
    ``weights_only=True``: tensors, numbers, strings, lists and dicts only.
    A checkpoint folder may come from someone else (a shared Drive folder),
    and a full unpickle would run any code stored in it."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValidationError("resume", str(path.parent), f"{path.name} is not a checkpoint this program wrote "
                              f"or is damaged; it was not loaded ({reason[:160]})") from exc


def list_checkpoints(out: str | Path) -> list[Path]:
    """``OUT/checkpoints/step-N`` folders, oldest first."""
    root = Path(out) / "checkpoints"
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit() and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(out: str | Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def find_checkpoint(out: Path, resume: str) -> Path:
    """``resume`` is "latest" (the newest under ``out``) or a checkpoint folder."""
    if resume == "latest":
        found = latest_checkpoint(out)
        if found is None:
            raise ValidationError("resume", resume, f"there is no checkpoint in {str(out / 'checkpoints')!r}")
        return found
    path = Path(resume)
    if not (path / "state.pt").is_file():
        raise ValidationError("resume", resume, "is not a checkpoint folder (no state.pt)")
    return path
