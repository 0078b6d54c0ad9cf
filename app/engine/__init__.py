"""The engine: request and result types, their validation, and ``Engine``,
which turns requests into images on a loaded pipeline. It knows nothing of
Flask, the job queue or the command line (they import it, never the reverse).
"""
from app.engine.engine import (
    Engine,
    EngineOptions,
    GenerationCancelled,
    GenerationOutOfMemory,
    StepCallback,
    save_result,
)
from app.engine.types import (
    DEFAULT_LIMITS,
    MAX_SEED,
    GenerationRequest,
    GenerationResult,
    Limits,
    StepInfo,
    ValidationError,
)

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_SEED",
    "Engine",
    "EngineOptions",
    "GenerationCancelled",
    "GenerationOutOfMemory",
    "GenerationRequest",
    "GenerationResult",
    "Limits",
    "StepCallback",
    "StepInfo",
    "ValidationError",
    "save_result",
]
