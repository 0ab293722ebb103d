"""Sessions: CPU always works; CUDA falls back to CPU with a clear warning where the build has no CUDA."""

import numpy as np
import onnxruntime as ort
import pytest
from models import mlp_gemm, random_inputs

from onnx_flipout.errors import ConfigError
from onnx_flipout.runtime.session import ProviderFallbackWarning, make_session, resolve_providers


def test_cpu_session_runs():
    m = mlp_gemm()
    out = make_session(m, "cpu", threads=1).run(None, random_inputs(m))[0]
    assert out.shape == (16, 10) and np.isfinite(out).all()


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_falls_back_to_cpu_with_warning():
    with pytest.warns(ProviderFallbackWarning, match="running on CPU"):
        assert resolve_providers("cuda") == ["CPUExecutionProvider"]
    with pytest.warns(ProviderFallbackWarning):
        make_session(mlp_gemm(), "cuda").run(None, random_inputs(mlp_gemm()))


def test_unknown_provider_is_a_config_error():
    with pytest.raises(ConfigError, match="tpu"):
        resolve_providers("tpu")
