"""onnx-flipout: prune (FlipOut), fine-tune and quantize ONNX models directly, without their source framework."""

__version__ = "0.1.0"

from .api import compress  # noqa: E402
from .config import CompressConfig  # noqa: E402
from .errors import ConfigError, DataError, FlipoutError, ModelError, OutputError, TrainingError  # noqa: E402
from .report import Report  # noqa: E402

__all__ = [
    "compress", "CompressConfig", "Report",
    "FlipoutError", "ConfigError", "DataError", "ModelError", "OutputError", "TrainingError",
]
