"""Inference sessions on the CPU or CUDA execution provider, with a clear fallback when CUDA is missing."""

from __future__ import annotations

import os
import warnings

import onnx
import onnxruntime as ort

ort.set_default_logger_severity(3)  # onnxruntime's INFO/WARNING chatter is not our users' business

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class ProviderFallbackWarning(UserWarning):
    """CUDA was asked for but is not available; the model runs on the CPU instead."""


def resolve_providers(provider: str) -> list[str]:
    """Execution providers to use for `provider` ("cpu" or "cuda"), falling back to CPU with a warning."""
    if provider not in PROVIDERS:
        from onnx_flipout.errors import ConfigError

        raise ConfigError(f"unknown provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    if wanted != "CPUExecutionProvider" and wanted not in ort.get_available_providers():
        warnings.warn(
            f"{wanted} is not available in this onnxruntime build ({ort.__version__}); running on CPU instead. "
            "Install a CUDA-enabled onnxruntime in a separate environment to use --provider cuda.",
            ProviderFallbackWarning,
            stacklevel=2,
        )
        return ["CPUExecutionProvider"]
    return [wanted, "CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [wanted]


def make_session(
    model: onnx.ModelProto | str | os.PathLike,
    provider: str = "cpu",
    threads: int | None = None,
    optimized_model_path: str | None = None,
) -> ort.InferenceSession:
    """An InferenceSession for a ModelProto or a file path. threads=None lets onnxruntime choose."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if optimized_model_path is not None:
        opts.optimized_model_filepath = str(optimized_model_path)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=resolve_providers(provider))
