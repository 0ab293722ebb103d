"""onnx-flipout: prune (FlipOut), fine-tune and quantize ONNX models directly, without their source framework."""

__version__ = "0.1.0"

from .api import compress  # noqa: E402
from .config import CompressConfig  # noqa: E402
from .errors import (  # noqa: E402
    CheckpointError, ConfigError, DataError, FlipoutError, ModelError, ModelTooLargeError, OutputError, TrainingError,
    UnsafeModelError,
)
from .report import Report  # noqa: E402

__all__ = [
    "compress", "CompressConfig", "Report",
    "FlipoutError", "ConfigError", "DataError", "ModelError", "OutputError", "TrainingError", "CheckpointError",
    "UnsafeModelError", "ModelTooLargeError",
]
