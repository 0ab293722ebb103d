"""Hostile models, bad data and faults: each failure is a typed error with a one-line message, raised before
onnxruntime sees the model; no output is left, the inputs stay byte-identical, nothing outside the output folder is
touched, and the CLI exits with our code, not a signal. Also run under `python -O`: the bookkeeping checks below raise
explicitly (plain `assert` vanishes there), and the CLI subprocesses inherit -O.
"""

import errno
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from hostile_scene import W, Scene, check, declared, external_w, finish, model, sparse_w, symlink_dir
from onnx import TensorProto, helper, numpy_helper

from onnx_flipout import compress
from onnx_flipout import data as data_mod
from onnx_flipout.errors import DataError, ModelError, ModelTooLargeError, OutputError, UnsafeModelError
from onnx_flipout.model_io import check_output_path, load_model, save_model_atomic
from onnx_flipout.report import Report


@pytest.fixture
def scene(tmp_path):
    return Scene(tmp_path)


@pytest.fixture
def no_onnxruntime(monkeypatch):
    """Validation must fail before any onnxruntime session exists."""
    def refuse(*a, **k):
        raise RuntimeError("onnxruntime was reached before validation failed")
    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)


EXTERNAL = {  # name: (set-up returning the location, error, message)
    "dotdot": (lambda s: "../secret.bin", UnsafeModelError, "'..'"),
    "absolute": (lambda s: str(s.secret), UnsafeModelError, "absolute path"),
    "symlink": (lambda s: (s.inp / "w.bin").symlink_to(s.secret) or "w.bin", UnsafeModelError, "symlink"),
    "symlinked folder": (symlink_dir, UnsafeModelError, "symlinked folder"),
    "hardlink": (lambda s: os.link(s.secret, s.inp / "w.bin") or "w.bin", UnsafeModelError, "hardlink"),
    "ort memory": (lambda s: "*/_ORT_MEM_ADDR_*/*", UnsafeModelError, "in-memory address"),
    "fifo": (lambda s: os.mkfifo(s.inp / "w.bin") or "w.bin", UnsafeModelError, "not a regular file"),
    "missing": (lambda s: "w.bin", ModelError, "missing"),
    "length disagrees": (lambda s: (s.inp / "w.bin").write_bytes(bytes(128)) and "w.bin", ModelError, "need 64"),
}


@pytest.mark.parametrize("case", EXTERNAL)
def test_external_data_is_checked_before_reading(scene, case, monkeypatch):
    setup, error, match = EXTERNAL[case]
    path = scene.put_model(model(w=external_w(setup(scene))))
    monkeypatch.setattr("onnx.external_data_helper.load_external_data_for_tensor", None)  # a read would TypeError
    scene.freeze()
    with pytest.raises(error, match=match) as exc:
        load_model(path)
    check(type(exc.value) is error and "\n" not in str(exc.value) and "'w'" in str(exc.value), str(exc.value))
    scene.check_untouched()


def test_external_offset_past_the_end_and_a_good_reference(scene):
    (scene.inp / "w.bin").write_bytes(bytes(8) + W.tobytes())
    with pytest.raises(ModelError, match="past the end"):
        load_model(scene.put_model(model(w=external_w("w.bin", offset=40, length=64))))
    loaded = load_model(scene.put_model(model(w=external_w("w.bin", offset=8, length=64)), "ok.onnx"))
    w = loaded.graph.initializer[0]
    check(w.data_location == TensorProto.DEFAULT and np.array_equal(numpy_helper.to_array(w), W), "not inlined")


SPARSE = {  # FIELD-NOTES: a 108-byte model like the first makes onnxruntime 1.19.2 allocate 6.4 GB or segfault
    "tiny 6.4 GB out of range": ((40000, 40000), [5_000_000_000], [1.0], ModelError, "out of range"),
    "duplicates": ((4, 4), [3, 3], [1.0, 2.0], ModelError, "duplicates"),
    "unsorted": ((4, 4), [5, 2], [1.0, 2.0], ModelError, "ascending"),
    "count": ((4, 4), [1], [1.0, 2.0], ModelError, "indices have shape"),
    "negative dim": ((-4, 4), [1], [1.0], ModelError, "negative"),
    "4 TiB dense": ((2**20, 2**20), [0], [1.0], ModelTooLargeError, "max_bytes"),
}


@pytest.mark.parametrize("case", SPARSE)
def test_malformed_sparse_initializers(scene, case):
    dims, idx, vals, error, match = SPARSE[case]
    path = scene.put_model(model(sparse=[sparse_w(dims, idx, vals)]))
    check(path.stat().st_size < 160, "the hostile models here are 110-140 bytes")
    scene.freeze()
    with pytest.raises(error, match=match) as exc:
        load_model(path)
    check(type(exc.value) is error and "'w'" in str(exc.value), str(exc.value))
    scene.check_untouched()


BAD_MODELS = {  # name: (model, error, message)
    "100-byte 64 GiB tensor": (lambda: model(w=declared([2**21, 2**13])), ModelTooLargeError, "max_bytes"),
    "1 GiB declared, none held": (lambda: model(w=declared([2**18, 2**10])), ModelError, "holds 0 values"),
    "huge Constant": (lambda: model(nodes=[helper.make_node("Constant", [], ["w"], value=declared([2**40])),
                                           helper.make_node("MatMul", ["x", "w"], ["y"])]),
                      ModelTooLargeError, "max_bytes"),
    "IR 11": (lambda: model(ir=11), ModelError, "IR version 11"),
    "IR 2": (lambda: model(ir=2), ModelError, "IR version 2"),
    "opset 22": (lambda: model(opset=22), ModelError, "opset 22"),
    "opset 6": (lambda: model(opset=6), ModelError, "version_converter"),
    "custom domain": (lambda: model(nodes=[helper.make_node("Evil", ["x", "w"], ["y"], name="bad\nnode",
                                                            domain="my.ops")], domain_opsets=["my.ops"]),
                      ModelError, r"'bad\\nnode'.*'my.ops'"),
    "unknown op": (lambda: model(nodes=[helper.make_node("MatMulX", ["x", "w"], ["y"], name="n")]), ModelError,
                   "MatMulX.*is not an operator"),
    "op newer than opset": (lambda: model(nodes=[helper.make_node("Gelu", ["x"], ["y"], name="g")]), ModelError,
                            "opset 17"),
}


@pytest.mark.parametrize("case", BAD_MODELS)
def test_unsupported_or_oversized_models(scene, case):
    build, error, match = BAD_MODELS[case]
    path = scene.put_model(build())
    scene.freeze()
    with pytest.raises(error, match=match) as exc:
        load_model(path)
    check(type(exc.value) is error and "\n" not in str(exc.value), str(exc.value))
    scene.check_untouched()


def test_total_budget_and_every_truncation(scene):
    two = [sparse_w((10, 10), [0], [1.0]), sparse_w((10, 10), [0], [1.0], name="v")]  # 400 bytes each, dense
    with pytest.raises(ModelTooLargeError, match="in total"):
        load_model(scene.put_model(model(sparse=two)), max_bytes=500)
    whole = model().SerializeToString()
    for cut in range(0, len(whole)):  # every prefix: a parse error or a validation error, never anything else
        with pytest.raises(ModelError):
            load_model(scene.put_model(whole[:cut], "t.onnx"))


# -------------------------------------------------------------------------------------------------------------- data


def test_bare_npy_names_the_only_input_and_pickles_are_refused(scene):
    np.save(scene.inp / "x.npy", np.ones((6, 4), np.float32))
    ds = data_mod.conform(data_mod.load(scene.inp / "x.npy", require_labels=False), model())
    check(list(ds.inputs) == ["x"] and len(ds) == 6, "bare .npy not named after the input")
    with pytest.raises(DataError, match="no labels 'y'"):
        data_mod.load(scene.inp / "x.npy", labels="y")
    np.save(scene.inp / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="Python objects"):
        data_mod.load(scene.inp / "o.npy")
    (scene.inp / "p.npy").write_bytes(b"\x80\x04\x95" + bytes(20))  # a raw pickle stream
    with pytest.raises(DataError, match="pickles"):
        data_mod.load(scene.inp / "p.npy")


def test_npz_sizes_are_checked_from_headers_before_reading(scene):
    with pytest.raises(DataError, match="over max_bytes"):
        data_mod.load(scene.data, labels="y", max_bytes=100)
    header = np.lib.format.header_data_from_array_1_0(np.ones(1))
    header["shape"] = (10**11,)  # an 800 GB float64 array in a 200-byte member
    with zipfile.ZipFile(scene.inp / "bomb.npz", "w") as zf, zf.open("x.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(8))
    with pytest.raises(DataError, match="over max_bytes"):
        data_mod.load(scene.inp / "bomb.npz")
    with pytest.raises(DataError, match="truncated"):
        data_mod.load(scene.inp / "bomb.npz", max_bytes=10**12)


BAD_DATA = {  # name: (arrays, message)
    "strings": ({"x": np.array([["a"] * 4] * 5)}, "dtype"),
    "rank": ({"x": np.zeros((5, 4, 1), np.float32)}, "rank 2"),
    "shape": ({"x": np.zeros((5, 3), np.float32)}, "axis 1"),
    "missing": ({"pixels": np.zeros((5, 4), np.float32)}, "missing model input"),
    "extra": ({"x": np.zeros((5, 4), np.float32), "z": np.zeros(5)}, "not inputs"),
    "empty": ({"x": np.zeros((0, 4), np.float32)}, "no samples"),
    "scalar": ({"x": np.float32(1)}, "single value"),
    "inf": ({"x": np.full((5, 4), np.inf, np.float32)}, "NaN or Inf"),
    "label >= classes": ({"x": np.zeros((5, 4), np.float32), "y": np.array([0, 1, 2, 3, 4])}, r"label 4 .*4 classes"),
    "label NaN": ({"x": np.zeros((2, 4), np.float32), "y": np.array([0.0, np.nan])}, "NaN"),
    "label count": ({"x": np.zeros((2, 4), np.float32), "y": np.array([0, 1, 2])}, "disagree"),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_is_a_data_error(case):
    arrays, match = BAD_DATA[case]
    with pytest.raises(DataError, match=match):
        data_mod.conform(data_mod.load(arrays, "y" if "y" in arrays else None), model(), "y" if "y" in arrays else None)


def test_ragged_feeds_are_a_data_error():
    with pytest.raises(DataError, match="disagree on the shape of 'x'"):
        data_mod.load([{"x": np.zeros((2, 4))}, {"x": np.zeros((2, 3))}])


# ----------------------------------------------------------------------------------------------------------- outputs


def test_input_is_never_overwritten_under_another_name(scene):
    src = scene.put_model(model(w=external_w("w.data")))
    (scene.inp / "w.data").write_bytes(W.tobytes())
    (scene.out / "link.onnx").symlink_to(src)
    os.link(src, scene.out / "hard.onnx")
    scene.freeze()
    for out in (src, scene.out / "link.onnx", scene.out / "hard.onnx", scene.out / ".." / "in" / "m.onnx",
                scene.inp / "w.data"):
        with pytest.raises(OutputError, match="refusing to overwrite the input model"):
            check_output_path(src, out)
    with pytest.raises(OutputError, match="refusing to overwrite the input file"):
        check_output_path(src, scene.out / ".." / "in" / "d.npz", protected=(scene.data,))
    scene.check_untouched()


@pytest.fixture
def disk_full(monkeypatch):
    """ENOSPC on our temporary files, after a short write, as a filling disk does; other writes go through."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell our temporary file's descriptor")
    real = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            real(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)
    monkeypatch.setattr(os, "write", write)


def test_disk_full_keeps_the_previous_output_and_report(scene, disk_full):
    scene.output.write_bytes(b"previous model")
    (scene.out / "r.json").write_text("{}")
    scene.freeze()
    with pytest.raises(OutputError, match="no space left"):
        save_model_atomic(model(), scene.output)
    with pytest.raises(OutputError, match="no space left"):
        Report(model="m", output="o", config={}, target_sparsity=0.5).write_json(scene.out / "r.json")
    scene.check_untouched()


def test_failed_fsync_and_new_file_permissions(scene, monkeypatch):
    mask = os.umask(0o022)
    os.umask(mask)
    save_model_atomic(model(), scene.output)
    check(scene.output.stat().st_mode & 0o777 == 0o666 & ~mask, "output permissions differ from open()'s")
    scene.freeze()

    def fsync(fd):
        raise OSError(errno.EIO, "I/O error")
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OutputError, match="I/O error"):
        save_model_atomic(model(w=numpy_helper.from_array(W * 2, "w")), scene.output)
    scene.check_untouched()


@pytest.mark.training
def test_disk_full_at_the_end_of_a_real_run(scene, disk_full):
    path = scene.put_model(model())
    scene.output.write_bytes(b"previous model")
    scene.freeze()
    with pytest.raises(OutputError, match="no space left"):
        compress(path, scene.output, data=scene.data, labels="y", sparsity=0.5, epochs=2, batch_size=8, quantize="none",
                 progress=False)
    scene.check_untouched()


# ------------------------------------------------- end to end: the same hostile inputs through compress() and the CLI


def _truncated(s):
    return s.put_model(model().SerializeToString()[:-7])


def _with_data(**arrays):
    return lambda s: (s.put_model(model()), s.put_data("bad.npz", **arrays))


def _object_npy(s):
    np.save(s.inp / "bad.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return s.put_model(model()), s.inp / "bad.npy"


END_TO_END = {  # name: (set-up returning the model path or (model, data)), error, message)
    "tiny 6.4 GB sparse": (lambda s: s.put_model(model(sparse=[sparse_w((40000, 40000), [5_000_000_000], [1.0])])),
                           ModelError, "out of range"),
    "100-byte 64 GiB": (lambda s: s.put_model(model(w=declared([2**21, 2**13]))), ModelTooLargeError, "max_bytes"),
    "dotdot": (lambda s: s.put_model(model(w=external_w("../secret.bin"))), UnsafeModelError, "'..'"),
    "absolute": (lambda s: s.put_model(model(w=external_w(str(s.secret)))), UnsafeModelError, "absolute"),
    "symlink": (lambda s: EXTERNAL["symlink"][0](s) and s.put_model(model(w=external_w("w.bin"))),
                UnsafeModelError, "symlink"),
    "truncated": (_truncated, ModelError, "m.onnx"),
    "pickled npy": (_object_npy, DataError, "Python objects"),
    "labels out of range": (_with_data(x=np.zeros((9, 4), np.float32), y=np.arange(9)), DataError, "out of range"),
    "NaN data": (_with_data(x=np.full((9, 4), np.nan, np.float32), y=np.zeros(9, int)), DataError, "NaN"),
}


def _setup(scene, case):
    made = END_TO_END[case][0](scene)
    return made if isinstance(made, tuple) else (made, scene.data)


@pytest.mark.parametrize("case", END_TO_END)
def test_compress_refuses_before_onnxruntime(scene, case, no_onnxruntime):
    model_path, data = _setup(scene, case)
    scene.freeze()
    with pytest.raises(END_TO_END[case][1], match=END_TO_END[case][2]):
        compress(model_path, scene.output, data=data, labels="y", epochs=1, progress=False)
    scene.check_untouched()


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Every END_TO_END case through `onnx-flipout compress` (plus bench and inspect), as concurrent processes."""
    python = [sys.executable] + (["-O"] if sys.flags.optimize else [])
    runs = {}
    for case in END_TO_END:
        s = Scene(tmp_path_factory.mktemp("cli"))
        model_path, data = _setup(s, case)
        s.freeze()
        args = ["compress", model_path, "-o", s.output, "--data", data, "--labels", "y", "--epochs", "1"]
        runs[case] = (s, subprocess.Popen([*python, "-m", "onnx_flipout", *map(str, args)], text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for name, command, setup in (("bench dotdot", "bench", END_TO_END["dotdot"][0]),
                                 ("inspect truncated", "inspect", _truncated)):
        s = Scene(tmp_path_factory.mktemp("cli"))
        path = setup(s)
        s.freeze()
        runs[name] = (s, subprocess.Popen([*python, "-m", "onnx_flipout", command, str(path)], text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return {k: (s, p, *finish(p)) for k, (s, p) in runs.items()}


CLI_EXPECT = {**{k: v[1] for k, v in END_TO_END.items()}, "bench dotdot": UnsafeModelError,
              "inspect truncated": ModelError}


@pytest.mark.parametrize("case", CLI_EXPECT)
def test_cli_exits_with_our_code_not_a_signal(cli_runs, case):
    s, proc, _, err = cli_runs[case]
    code = CLI_EXPECT[case].exit_code
    check(proc.returncode == code, f"exit {proc.returncode} (negative: killed by a signal), wanted {code}: {err}")
    lines = err.strip().splitlines()
    check(len(lines) == 1 and lines[0].startswith("onnx-flipout: error: "), f"not one error line: {err!r}")
    s.check_untouched()
