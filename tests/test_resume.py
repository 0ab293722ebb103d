"""Checkpoints and --resume: an interrupted and resumed run ends bit for bit where an uninterrupted one ends (weights,
masks, flips, losses, output file bytes), and a checkpoint that does not fit is refused with a CheckpointError."""

import json
import shlex
import shutil

import numpy as np
import onnx
import pytest
from conftest import file_bytes

import onnx_flipout
from onnx_flipout import api, cli
from onnx_flipout.config import CompressConfig
from onnx_flipout.errors import CheckpointError, ConfigError, TrainingError
from onnx_flipout.hooks import ParamView
from onnx_flipout.pruning.pruner import Pruner
from onnx_flipout.pruning.schedule import GeometricSchedule
from onnx_flipout.pruning.scores import FlipOutScore
from onnx_flipout.runtime.checkpoint import CheckpointStore, latest_step

EPOCHS = 3  # 1437 digits / 32 = 45 steps per epoch, 135 in all; sparsity 0.75 prunes after steps 45 and 90


def run(files, out, **options):
    options = {"epochs": EPOCHS, "sparsity": 0.75, "progress": False, **options}
    return onnx_flipout.compress(files["model"], out, data=files["train"], labels="y", eval_data=files["test"],
                                 **options)


def spy_finetune(monkeypatch) -> list:
    """Record what finetune returns (trained weights, masks, flips, losses) on each compress call."""
    seen, original = [], api.finetune
    monkeypatch.setattr(api, "finetune", lambda *a: seen.append(original(*a)) or seen[-1])
    return seen


def interrupt_at(monkeypatch, step: int) -> None:
    """Ctrl-C in the middle of `step`: its gradients and optimizer step are done, the pruner's part is not."""
    original = Pruner.after_step

    def after_step(self, s, params):
        if s == step:
            raise KeyboardInterrupt
        original(self, s, params)

    monkeypatch.setattr(Pruner, "after_step", after_step)


def assert_same_run(a, b) -> None:
    (params_a, pruning_a, history_a), (params_b, pruning_b, history_b) = a, b
    assert params_a.keys() == params_b.keys()
    for name in params_a:
        assert np.array_equal(params_a[name], params_b[name]), name
    for name in pruning_a.masks:
        assert np.array_equal(pruning_a.masks[name], pruning_b.masks[name]), name
    assert (pruning_a.flips is None) == (pruning_b.flips is None)
    for name in pruning_a.flips or {}:
        assert np.array_equal(pruning_a.flips[name], pruning_b.flips[name]), name
    assert [vars(e) for e in pruning_a.events] == [vars(e) for e in pruning_b.events]
    assert history_a.epoch_loss == history_b.epoch_loss and history_a.steps == history_b.steps


CONFIGS = {
    "flipout+noise, sgd momentum": dict(criterion="flipout", noise=1.0, optimizer="sgd", quantize="int8"),
    "random, adamw": dict(criterion="random", optimizer="adamw", weight_decay=0.01, quantize="none"),
    "snip (step-0 event), sgd + weight decay": dict(criterion="snip", weight_decay=1e-3, quantize="int8"),
}


@pytest.mark.training
@pytest.mark.parametrize("options", CONFIGS.values(), ids=CONFIGS.keys())
def test_interrupted_and_resumed_run_is_bit_identical(digits_files, tmp_path, monkeypatch, options):
    seen = spy_finetune(monkeypatch)
    run(digits_files, tmp_path / "plain.onnx", **options)  # no checkpoints at all: saving must not perturb either
    ckpt, out = tmp_path / "ckpt", tmp_path / "resumed.onnx"
    original = Pruner.after_step
    interrupt_at(monkeypatch, 87)
    with pytest.raises(KeyboardInterrupt):
        run(digits_files, out, checkpoint_dir=ckpt, checkpoint_every=20, **options)
    assert latest_step(ckpt) == (80, 135) and not out.exists()  # mid-epoch 2, before the second prune event
    monkeypatch.setattr(Pruner, "after_step", original)
    run(digits_files, out, checkpoint_dir=ckpt, checkpoint_every=20, resume=True, **options)
    assert file_bytes(out) == file_bytes(tmp_path / "plain.onnx")
    assert_same_run(seen[0], seen[-1])
    assert latest_step(ckpt) == (135, 135)


@pytest.mark.training
def test_ctrl_c_in_the_cli_even_while_saving_then_the_printed_resume_command(digits_files, tmp_path, monkeypatch,
                                                                           capsys):
    base = ["compress", str(digits_files["model"]), "--data", str(digits_files["train"]), "--labels", "y",
            "--eval-data", str(digits_files["test"]), "--sparsity", "0.75", "--epochs", str(EPOCHS), "--no-progress"]
    assert cli.main([*base, "-o", str(tmp_path / "plain.onnx")]) == 0
    ckpt, out = tmp_path / "ckpt", tmp_path / "resumed.onnx"
    before = file_bytes(digits_files["model"])
    original_write, calls = CheckpointStore._write, []

    def write(self, tmp, *args):  # the interrupt lands in the second save, after onnxruntime wrote its file
        calls.append(tmp)
        original_write(self, tmp, *args)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(CheckpointStore, "_write", write)
    capsys.readouterr()
    assert cli.main([*base, "-o", str(out), "--checkpoint-dir", str(ckpt), "--checkpoint-every", "30"]) == 130
    err = capsys.readouterr().err
    assert f"the last checkpoint (step 30 of 135) is in {ckpt}" in err and "no output was written" in err
    assert [p.name for p in ckpt.iterdir()] == ["step-000000030"]  # no half-written folder left beside it
    assert not out.exists() and file_bytes(digits_files["model"]) == before
    monkeypatch.setattr(CheckpointStore, "_write", original_write)
    command = shlex.split(err.split("Continue with: ")[1].strip())
    assert command[0] == "onnx-flipout" and command[-1] == "--resume"
    assert cli.main(command[1:]) == 0
    assert file_bytes(out) == file_bytes(tmp_path / "plain.onnx")


@pytest.mark.training
def test_non_finite_weights_stop_the_run_and_keep_the_last_good_checkpoint(digits_files, tmp_path):
    from onnx_flipout.passes.prunable import find_trainable_params
    from onnx_flipout.runtime.artifacts import build_artifacts
    from onnx_flipout.runtime.losses import LossSpec
    from onnx_flipout.runtime.trainer import Trainer, TrainSettings

    model = onnx.load(str(digits_files["model"]))
    arts = build_artifacts(model, find_trainable_params(model), "logits", LossSpec("cross_entropy"), "sgd",
                           tmp_path / "arts")
    data = np.load(digits_files["train"])

    class Poison:  # writes NaN into one weight after step `at`
        def __init__(self, at):
            self.at = at

        def on_start(self, params, total): ...
        def before_step(self, step, params): ...
        def status(self): return {}

        def after_step(self, step, params):
            if step == self.at:
                params["fc1.weight"].data[0, 0] = np.nan

    for at, needle in ((3, "loss became nan at step 4"), (4, "became non-finite by step 4")):
        store = CheckpointStore(tmp_path / f"ck{at}", {"run": at})
        trainer = Trainer(arts, TrainSettings(epochs=1, progress=False, checkpoint_every=2), checkpoints=store)
        with pytest.raises(TrainingError, match=needle) as info:
            trainer.fit({"x": data["x"][:320]}, data["y"][:320], [Poison(at)])
        assert f"last good checkpoint is kept in {tmp_path / f'ck{at}' / 'step-000000002'}" in str(info.value)
        assert store.load().step == 2  # and it is complete and valid


@pytest.fixture(scope="module")
def saved_checkpoint(digits_files, tmp_path_factory):
    """A finished run's checkpoint folder (sparsity 0.75, 2 epochs), copied by each test before it spoils it."""
    root = tmp_path_factory.mktemp("saved")
    run(digits_files, root / "o.onnx", epochs=2, quantize="none", checkpoint_dir=root / "ckpt")
    return root / "ckpt"


def _edit_manifest(folder, **changes):
    path = folder / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


SPOILERS = {  # id: (how to spoil the copied checkpoint, options that differ now, what the message must say)
    "other sparsity": (None, {"sparsity": 0.5}, "--sparsity 0.75 in the checkpoint, 0.5 now"),
    "other lr and seed": (None, {"lr": 0.01, "seed": 3}, "--lr 0.05 in the checkpoint, 0.01 now; --seed 0"),
    "truncated arrays": (lambda f: (f / "arrays.npz").write_bytes((f / "arrays.npz").read_bytes()[:100]), {},
                         "arrays.npz is truncated"),
    "corrupt ort state": (lambda f: _flip_a_byte(f / "ort_state"), {}, "ort_state is corrupt"),
    "missing manifest": (lambda f: (f / "manifest.json").unlink(), {}, "manifest.json is missing"),
    "garbage manifest": (lambda f: (f / "manifest.json").write_text("{not json"), {}, "unreadable or corrupt"),
    "format version": (lambda f: _edit_manifest(f, version=99), {}, "format version 99"),
}


@pytest.mark.training
@pytest.mark.parametrize("spoil, options, needle", SPOILERS.values(), ids=SPOILERS.keys())
def test_a_checkpoint_that_does_not_fit_is_refused(digits_files, saved_checkpoint, tmp_path, spoil, options, needle):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved_checkpoint, ckpt)
    step_dir = ckpt / "step-000000090"
    if spoil is not None:
        spoil(step_dir)
    before = file_bytes(digits_files["model"])
    settings = dict(epochs=2, quantize="none", checkpoint_dir=ckpt, resume=True)
    with pytest.raises(CheckpointError) as info:
        run(digits_files, tmp_path / "o.onnx", **{**settings, **options})
    assert str(step_dir) in str(info.value) and needle in str(info.value)
    assert not (tmp_path / "o.onnx").exists() and file_bytes(digits_files["model"]) == before


@pytest.mark.training
def test_other_model_other_data_used_folder_and_empty_folder_are_refused(digits_files, saved_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved_checkpoint, ckpt)
    model = onnx.load(str(digits_files["model"]))
    model.graph.initializer[0].raw_data = bytes(len(model.graph.initializer[0].raw_data))
    onnx.save(model, str(tmp_path / "other.onnx"))
    data = np.load(digits_files["train"])
    np.savez(tmp_path / "fewer.npz", x=data["x"][:-1], y=data["y"][:-1])
    common = dict(labels="y", eval_data=digits_files["test"], epochs=2, sparsity=0.75, quantize="none",
                  progress=False)
    cases = [(tmp_path / "other.onnx", digits_files["train"], ckpt, True, "the model differs"),
             (digits_files["model"], tmp_path / "fewer.npz", ckpt, True, "the training data differs"),
             (digits_files["model"], digits_files["train"], ckpt, False, "already holds a checkpoint"),
             (digits_files["model"], digits_files["train"], tmp_path / "empty", True, "no checkpoint to resume")]
    before = file_bytes(digits_files["model"])
    for model_path, data_path, folder, resume, needle in cases:
        with pytest.raises(CheckpointError, match=needle):
            onnx_flipout.compress(model_path, tmp_path / "o.onnx", data=data_path, checkpoint_dir=folder,
                                  resume=resume, **common)
        assert not (tmp_path / "o.onnx").exists() and file_bytes(digits_files["model"]) == before
    assert [p.name for p in ckpt.iterdir()] == ["step-000000090"]  # refusing never deletes a checkpoint
    assert not (tmp_path / "empty").exists()  # a mistyped --resume folder is not created


@pytest.mark.training
def test_resuming_a_finished_run_goes_straight_to_quantization(digits_files, saved_checkpoint, tmp_path,
                                                               monkeypatch):
    """The last checkpoint is taken after the last step: a run that failed later (quantization, writing the output)
    resumes without training again and writes what it would have written."""
    from onnx_flipout.runtime.trainer import Trainer

    shutil.copytree(saved_checkpoint, tmp_path / "ckpt")
    monkeypatch.setattr(Trainer, "_step", lambda *a: pytest.fail("a finished run trained again"))
    rep = run(digits_files, tmp_path / "o.onnx", epochs=2, quantize="none", checkpoint_dir=tmp_path / "ckpt",
              resume=True)
    assert file_bytes(tmp_path / "o.onnx") == file_bytes(saved_checkpoint.parent / "o.onnx")
    assert len(rep.epoch_loss) == 2 and rep.achieved_sparsity == 0.75


def test_checkpoint_options_are_checked():
    with pytest.raises(ConfigError, match="--resume needs --checkpoint-dir"):
        CompressConfig(resume=True)
    with pytest.raises(ConfigError, match="--checkpoint-every must be a positive integer"):
        CompressConfig(checkpoint_dir="c", checkpoint_every=0)
    assert CompressConfig(checkpoint_dir="c").resume_key()["lr"] == 0.05


def test_pruner_state_round_trip_through_a_checkpoint_is_exact(tmp_path):
    """Pure numpy: masks, flip buffers (uint8, unfolded: 300 steps pass between the event at 300 and the one at 600,
    so a wrong fold position after the resume at 400 overflows them), noise generator, schedule position."""
    total, cut = 900, 400
    rng = np.random.default_rng(0)
    w0 = {"a": rng.normal(size=(40, 30)).astype(np.float32), "b": rng.normal(size=(30, 10)).astype(np.float32)}
    w0["b"][0, 0] = 500.0
    grads = [{n: rng.normal(size=w.shape).astype(np.float32) for n, w in w0.items()} for _ in range(total)]

    def steps(pruner, params, first, last):
        for step in range(first, last + 1):
            for n, p in params.items():
                p.grad[...] = grads[step - 1][n]
            pruner.before_step(step, params)
            for p in params.values():
                p.data -= 0.05 * p.grad
            params["b"].data[0, 0] = 500.0 * (-1) ** step  # flips at every step
            pruner.after_step(step, params)

    def start():
        pruner = Pruner(list(w0), FlipOutScore(), GeometricSchedule(0.75), noise=0.5, seed=1)
        params = {n: ParamView(w.copy(), np.zeros_like(w)) for n, w in w0.items()}
        pruner.on_start(params, total)
        return pruner, params

    whole, whole_params = start()
    steps(whole, whole_params, 1, total)
    first, params = start()
    steps(first, params, 1, cut)
    store = CheckpointStore(tmp_path, {"test": 1})
    store.save(cut, total, lambda p: p.write_bytes(b"ort"), {}, [first.state_dict()])
    second = Pruner(list(w0), FlipOutScore(), GeometricSchedule(0.75), noise=0.5, seed=1)
    second.load_state_dict(store.load().hooks[0])
    second.on_start(params, total)  # params hold the weights after step `cut`, as onnxruntime's restored state would
    steps(second, params, cut + 1, total)
    a, b = whole.result(), second.result()
    assert [vars(e) for e in a.events] == [vars(e) for e in b.events] and [e.step for e in a.events] == [300, 600]
    assert a.flips["b"][0, 0] == total
    for n in w0:
        assert np.array_equal(whole_params[n].data, params[n].data)
        assert np.array_equal(a.masks[n], b.masks[n]) and np.array_equal(a.flips[n], b.flips[n])
