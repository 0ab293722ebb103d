"""Builders for tests/test_hostile.py: a scene of input / output / outside folders with snapshots, and tiny hostile
models (IR and opset pinned by tests/models.py) made in code."""

import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np
from models import IR_VERSION, OPSET
from onnx import TensorProto, helper, numpy_helper

W = np.arange(16, dtype=np.float32).reshape(4, 4)  # the 4x4 weight every test model multiplies by (64 bytes)


def check(cond, what):
    if not cond:  # not `assert`: this must still fail under python -O
        raise AssertionError(what)


class Scene:
    """tmp/in: the inputs; tmp/out: the output folder; tmp/secret.bin (a valid 4x4 tensor) and tmp/canary.txt sit
    outside both, where a traversal would reach."""

    def __init__(self, root: Path):
        self.root, self.inp, self.out = root, root / "in", root / "out"
        self.inp.mkdir()
        self.out.mkdir()
        (root / "canary.txt").write_text("canary")
        self.secret = root / "secret.bin"
        self.secret.write_bytes(W.tobytes())
        self.output = self.out / "o.onnx"
        self.data = self.put_data(x=np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32),
                                  y=np.arange(40) % 4)

    def put_model(self, model, name="m.onnx") -> Path:
        path = self.inp / name
        path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
        return path

    def put_data(self, name="d.npz", **arrays) -> Path:
        np.savez(self.inp / name, **arrays)
        return self.inp / name

    def freeze(self):
        self.before, self.out_before = _snapshot(self.root, self.out), sorted(os.listdir(self.out))

    def check_untouched(self):
        check(_snapshot(self.root, self.out) == self.before, "an input or a file outside the output folder changed")
        check(sorted(os.listdir(self.out)) == self.out_before, f"output folder now holds {os.listdir(self.out)}")


def _snapshot(root: Path, skip: Path) -> dict:
    state = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) != skip]
        for name in dirs + files:
            p = Path(folder, name)
            st = p.lstat()
            body = os.readlink(p) if p.is_symlink() else (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file()
                                                           and not p.is_symlink() else None)
            state[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, body)
    return state



def model(w=None, sparse=(), nodes=None, ir=IR_VERSION, opset=OPSET, domain_opsets=()):
    """y = x @ w, with x [N, 4] and w a dense initializer (W by default) or a sparse one."""
    inits = [] if sparse else [w if w is not None else numpy_helper.from_array(W, "w")]
    nodes = nodes or [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits,
                          sparse_initializer=list(sparse))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domain_opsets]
    return helper.make_model(g, opset_imports=opsets, ir_version=ir)


def sparse_w(dims, indices, values, name="w"):
    v = numpy_helper.from_array(np.asarray(values, np.float32), name)
    return helper.make_sparse_tensor(v, numpy_helper.from_array(np.asarray(indices, np.int64), ""), list(dims))


def external_w(location, dims=(4, 4), **fields):
    t = TensorProto(name="w")
    t.data_type, t.data_location = TensorProto.FLOAT, TensorProto.EXTERNAL
    t.dims.extend(dims)
    for key, value in {"location": location, **fields}.items():
        t.external_data.add(key=key, value=str(value))
    return t


def declared(dims):  # a dense initializer that declares dims but carries no data: ~100 bytes on disk
    t = TensorProto(name="w", data_type=TensorProto.FLOAT)
    t.dims.extend(dims)
    return t


def symlink_dir(s: Scene) -> str:
    """in/d -> the scene's root, so in/d/secret.bin reaches outside through a symlinked folder."""
    (s.inp / "d").symlink_to(s.root)
    return "d/secret.bin"


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # a hang is a failure too; do not leave the process behind
        proc.kill()
        return proc.communicate()
