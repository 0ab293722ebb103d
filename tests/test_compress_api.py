"""compress() end to end: real fine-tuning in onnxruntime-training, real passes, real onnxruntime sessions."""

import json

import numpy as np
import onnx
import pytest
from conftest import file_bytes
from onnx import numpy_helper

from onnx_flipout import compress
from onnx_flipout.errors import ConfigError, DataError, ModelError, OutputError
from onnx_flipout.passes import DensifyInitializers
from onnx_flipout.runtime.session import make_session

pytestmark = pytest.mark.training

PRUNABLE = 64 * 64 + 64 * 10


def _int8_weights(model):
    dense = DensifyInitializers()(model).model
    return {t.name: numpy_helper.to_array(t) for t in dense.graph.initializer if t.data_type == onnx.TensorProto.INT8}


def test_int8_compress_hits_exact_sparsity_and_fuses(digits_files, tmp_path):
    before = file_bytes(digits_files["model"])
    out, rep_path = tmp_path / "small.onnx", tmp_path / "report.json"
    # shrink=False: the zeros counted below must all still be in the file (shrinking would remove dead units)
    rep = compress(digits_files["model"], out, data=digits_files["train"], labels="y", eval_data=digits_files["test"],
                   report=rep_path, sparsity=0.9, epochs=6, shrink=False, progress=False)
    assert rep.achieved_sparsity == round(PRUNABLE * 0.9) / PRUNABLE
    assert file_bytes(digits_files["model"]) == before  # input untouched
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert model.ir_version <= 10 and all(o.version <= 21 for o in model.opset_import if o.domain in ("", "ai.onnx"))
    zeros = sum(int((w == 0).sum()) for w in _int8_weights(model).values())
    assert zeros >= round(PRUNABLE * 0.9)  # pruned zeros survive quantization exactly
    assert rep.accuracy_after > 0.85 and rep.agreement["top1_agreement"] > 0.85
    assert rep.bytes_after < 0.35 * rep.bytes_before
    optimized = tmp_path / "opt.onnx"
    make_session(out, optimized_model_path=optimized)
    g = onnx.load(str(optimized)).graph
    inits = {t.name for t in g.initializer}
    assert not [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert {n.op_type for n in g.node} & {"QGemm", "QLinearMatMul"}
    saved = json.loads(rep_path.read_text())
    assert saved["achieved_sparsity"] == rep.achieved_sparsity and len(saved["tensors"]) == 2
    assert set(saved["stage_seconds"]) >= {"fine-tune", "quantize", "encode", "verify"}


def test_distillation_without_labels_and_dict_data(digits_files, tmp_path):
    train = dict(np.load(digits_files["train"]))
    rep = compress(digits_files["model"], tmp_path / "d.onnx", data={"x": train["x"]}, sparsity=0.5,
                   quantize="none", epochs=3, progress=False)
    assert rep.accuracy_before is None and rep.agreement["top1_agreement"] > 0.9
    w = {t.name: numpy_helper.to_array(t) for t in DensifyInitializers()(onnx.load(str(tmp_path / "d.onnx"))).model.graph.initializer}
    assert sum(int((w[n] == 0).sum()) for n in ("fc1.weight", "fc2.weight")) == round(PRUNABLE * 0.5)


def test_adamw_keeps_pruned_weights_zero_and_iterable_data(digits_files, tmp_path):
    train = dict(np.load(digits_files["train"]))
    feeds = ({"x": train["x"][i : i + 100], "y": train["y"][i : i + 100]} for i in range(0, len(train["y"]), 100))
    rep = compress(digits_files["model"], tmp_path / "a.onnx", data=feeds, labels="y", sparsity=0.8,
                   quantize="none", optimizer="adamw", epochs=4, progress=False)
    assert rep.achieved_sparsity == round(PRUNABLE * 0.8) / PRUNABLE
    assert rep.config["lr"] == 1e-3


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"sparsity": 1.5}, ConfigError, "sparsity"),
        ({"criterion": "bogus"}, ConfigError, "criterion"),
        ({"labels": "nope"}, DataError, "nope"),
        ({"epochs": 0}, ConfigError, "epochs"),
    ],
)
def test_bad_options_fail_before_writing(digits_files, tmp_path, kwargs, error, match):
    out = tmp_path / "x.onnx"
    args = {"labels": "y", **kwargs}
    with pytest.raises(error, match=match):
        compress(digits_files["model"], out, data=digits_files["train"], progress=False, **args)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_model_input_is_named(digits_files, tmp_path):
    with pytest.raises(DataError, match="missing model input.*x"):
        compress(digits_files["model"], tmp_path / "x.onnx", data={"pixels": np.zeros((10, 64), np.float32)})


def test_non_onnx_file_and_overwriting_the_input(digits_files, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelError, match="junk.onnx"):
        compress(junk, tmp_path / "o.onnx", data=digits_files["train"], labels="y")
    with pytest.raises(OutputError, match="overwrite the input"):
        compress(digits_files["model"], digits_files["model"], data=digits_files["train"], labels="y")


def test_soft_target_distillation_keeps_agreement_at_high_sparsity(digits_files, tmp_path):
    """Unlabeled training data, labels only for evaluation: distilled with soft cross-entropy."""
    train = dict(np.load(digits_files["train"]))
    rep = compress(digits_files["model"], tmp_path / "s.onnx", data={"x": train["x"]}, eval_data=digits_files["test"],
                   labels="y", sparsity=0.9, epochs=8, progress=False)
    assert rep.loss == "soft_cross_entropy"
    assert rep.agreement["top1_agreement"] > 0.95 and rep.accuracy_after > rep.accuracy_before - 0.03


def test_mse_distillation_is_scale_free(digits_files, tmp_path):
    train = dict(np.load(digits_files["train"]))
    rep = compress(digits_files["model"], tmp_path / "m.onnx", data={"x": train["x"]}, sparsity=0.75,
                   quantize="none", distill="mse", epochs=6, progress=False)
    assert rep.loss == "mse" and rep.agreement["cosine"] > 0.95


def test_a_run_failing_after_encoding_leaves_no_output_and_keeps_the_previous(digits_files, tmp_path, monkeypatch):
    import onnx_flipout.api as api

    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    out.write_bytes(b"previous model")

    def broken(*args, **kwargs):
        raise RuntimeError("verification exploded")

    monkeypatch.setattr(api, "measure", broken)
    with pytest.raises(RuntimeError, match="exploded"):
        compress(digits_files["model"], out, data=digits_files["train"], labels="y", report=rep, sparsity=0.5,
                 quantize="none", epochs=1, progress=False)
    assert out.read_bytes() == b"previous model" and not rep.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.onnx"]  # no staged temporary left behind


def test_report_path_may_not_overwrite_inputs(digits_files, tmp_path):
    with pytest.raises(OutputError, match="refusing to overwrite"):
        compress(digits_files["model"], tmp_path / "o.onnx", data=digits_files["train"], labels="y",
                 report=digits_files["train"], progress=False)


@pytest.mark.parametrize("kwargs,match", [
    ({"seed": -1}, "seed"), ({"lr": float("inf")}, "lr"), ({"sparsity": False}, "sparsity"),
    ({"noise": float("nan")}, "noise"), ({"max_bytes": 0}, "max-bytes"),
])
def test_config_rejects_degenerate_values(kwargs, match):
    from onnx_flipout import CompressConfig

    with pytest.raises(ConfigError, match=match):
        CompressConfig(**kwargs)


def test_shrink_and_compact_indices_end_to_end(digits_files, tmp_path):
    """At 99 % units die and are removed; int32 indices give a smaller file that onnxruntime loads, and that our own
    loader (inspect) accepts although onnx.checker refuses int32 sparse indices."""
    from onnx_flipout.model_io import load_model

    common = dict(data=digits_files["train"], labels="y", eval_data=digits_files["test"], sparsity=0.99,
                  quantize="none", epochs=4, progress=False)
    plain = compress(digits_files["model"], tmp_path / "plain.onnx", shrink=False, **common)
    small = compress(digits_files["model"], tmp_path / "small.onnx", sparse_index="int32", **common)
    assert plain.units == {} and small.units  # e.g. {"fc1.weight": [64, 16]}
    assert all(after < before for before, after in small.units.values())
    assert small.bytes_after < plain.bytes_after
    assert small.agreement["top1_agreement"] == pytest.approx(plain.agreement["top1_agreement"], abs=1e-9)
    assert any("onnx.checker" in note for note in small.storage["notes"])
    load_model(tmp_path / "small.onnx")  # accepted: checked as if its indices were int64
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(onnx.load(str(tmp_path / "small.onnx")))
