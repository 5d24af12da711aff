"""Training runs: determinism, resume after Ctrl-C, run-directory contents, load_run, config validation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from singledir.data import load_dataset
from singledir.errors import RunDirError, SingledirError
from singledir.training import Run, TrainConfig, evaluate, load_run, log_epochs, read_summary, train

# digits + a tiny MLP: ~0.02 s per epoch. Dropout and batch norm exercise the RNG and buffers.
BASE = {
    "dataset": "digits",
    "width": 16,
    "epochs": 5,
    "seed": 7,
    "corrupt": 0.4,
    "dropout": 0.2,
    "batchnorm": True,
    "checkpoints": "2,3",
}


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _metrics(h: pd.DataFrame) -> pd.DataFrame:
    return h.drop(columns=["seconds"])


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Run:
    return train(BASE, tmp_path_factory.mktemp("runs") / "base", progress=False)


def test_same_config_twice_gives_identical_weights(base_run, tmp_path):
    # the caller's global RNG state must neither matter nor be changed
    torch.manual_seed(12345)
    before = torch.get_rng_state()
    again = train(BASE, tmp_path / "again", progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    assert _same_weights(base_run.model.state_dict(), again.model.state_dict())
    pd.testing.assert_frame_equal(_metrics(base_run.history), _metrics(again.history))
    for e in (0, 2, 3):
        name = f"checkpoints/epoch_{e:04d}.safetensors"
        assert _same_weights(load_file(base_run.run_dir / name), load_file(again.run_dir / name))


def test_resume_after_interrupt_equals_uninterrupted(base_run, tmp_path):
    out = tmp_path / "interrupted"

    def ctrl_c_after_epoch_3(epoch, metrics, model):
        assert set(metrics) >= {"train_acc", "test_acc"}
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(BASE, out, progress=False, callbacks=[ctrl_c_after_epoch_3])
    assert not (out / "COMPLETE").exists() and not (out / "model.safetensors").exists()
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["epoch"] == 3
    assert len(pd.read_csv(out / "history.csv")) == 4  # epochs 0..3
    with pytest.raises(RunDirError, match="incomplete"):
        load_run(out)
    # training into it again without resume/overwrite is refused with a hint in the library's terms
    with pytest.raises(RunDirError, match="resume=True") as err:
        train(BASE, out, progress=False)
    assert "--" not in str(err.value)  # library messages name parameters, not CLI flags
    # resume with settings that differ from the run's is refused
    with pytest.raises(SingledirError, match="lr=0.1"):
        train({**BASE, "lr": 0.1}, out, resume=True, progress=False)

    # runtime settings (data_dir, device, eval_batch_size) may change on resume; they are recorded
    resumed = train({**BASE, "eval_batch_size": 100}, out, resume=True, progress=False)
    assert resumed.config["resumes"][-1]["from_epoch"] == 3
    assert resumed.config["resumes"][-1]["eval_batch_size"] == 100
    assert (out / "COMPLETE").exists()
    assert resumed.epoch == 5
    assert _same_weights(base_run.model.state_dict(), resumed.model.state_dict())
    assert _same_weights(load_run(out).model.state_dict(), base_run.model.state_dict())
    pd.testing.assert_frame_equal(_metrics(base_run.history), _metrics(load_run(out).history))
    with pytest.raises(RunDirError, match="already a complete run"):
        train(None, out, resume=True, progress=False)


def test_complete_run_refused_unless_overwrite(base_run, tmp_path):
    out = tmp_path / "r"
    cfg = {**BASE, "epochs": 1, "checkpoints": None}
    train(cfg, out, progress=False)
    with pytest.raises(RunDirError, match="is a complete run; pass overwrite=True to replace it or choose another out_dir"):
        train(cfg, out, progress=False)
    stale = out / "checkpoints" / "epoch_0099.safetensors"
    stale.write_bytes(b"")
    run = train({**cfg, "seed": 8}, out, overwrite=True, progress=False)
    assert run.config["seed"] == 8 and not stale.exists()
    # a non-empty directory that is not a run is never replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a run"):
        train(cfg, other, overwrite=True, progress=False)
    assert (other / "notes.txt").exists()


def test_until_train_acc_stops_at_first_epoch_reaching_it(tmp_path):
    cfg = {"dataset": "digits", "width": 16, "until_train_acc": 0.6, "max_epochs": 40, "seed": 1}
    run = train(cfg, tmp_path / "u", progress=False)
    h = run.history
    assert run.final["stopped_reason"] == "until_train_acc"
    assert h["train_acc"].iloc[-1] >= 0.6 and (h["train_acc"].iloc[1:-1] < 0.6).all()
    assert run.epoch == h["epoch"].iloc[-1] < 40
    final = json.loads((run.run_dir / "final.json").read_text())
    assert final["stopped_reason"] == "until_train_acc" and final["epoch"] == run.epoch
    # the cap wins when the target is out of reach
    capped = train({**cfg, "until_train_acc": 1.0, "max_epochs": 2}, tmp_path / "cap", progress=False)
    assert capped.final["stopped_reason"] == "max_epochs" and capped.epoch == 2


def test_checkpoint_lists_and_log(base_run, tmp_path):
    assert log_epochs(20) == [1, 2, 3, 5, 8, 13]
    assert TrainConfig(checkpoints="5, 1,5").checkpoints == [1, 5]
    assert TrainConfig(checkpoints="log").checkpoint_epochs(6) == [0, 1, 2, 3, 5]
    ck = sorted(p.name for p in (base_run.run_dir / "checkpoints").iterdir())
    assert ck == ["epoch_0000.safetensors", "epoch_0002.safetensors", "epoch_0003.safetensors"]
    assert base_run.checkpoint_epochs == [0, 2, 3, 5]  # + the final epoch (model.safetensors)
    run = train({**BASE, "epochs": 6, "checkpoints": "log"}, tmp_path / "log", progress=False)
    assert run.checkpoint_epochs == [0, 1, 2, 3, 5, 6]
    none = train({**BASE, "epochs": 1, "checkpoints": None}, tmp_path / "none", progress=False)
    assert not any((none.run_dir / "checkpoints").iterdir()) and none.checkpoint_epochs == [1]


def test_config_json_records_settings_versions_and_data(base_run):
    cfg = json.loads((base_run.run_dir / "config.json").read_text())
    for k, v in BASE.items():
        assert cfg[k] == ([2, 3] if k == "checkpoints" else v)
    assert cfg["lr"] == 1e-3 and cfg["optimizer"] == "adam" and cfg["batch_size"] == 128
    assert cfg["data"]["fingerprint"] == load_dataset("digits").fingerprint
    assert set(cfg["versions"]) >= {"singledir", "torch", "python"}
    assert cfg["versions"]["torch"] == torch.__version__
    assert "git_revision" in cfg and {"hostname", "platform", "torch_threads"} <= set(cfg["host"])
    assert cfg["start_time"]
    corr = cfg["corruption"]
    assert corr["p"] == 0.4 and corr["method"] == "shuffle" and 0.25 < corr["fraction_changed"] < 0.4
    assert cfg["model_config"]["width"] == 16 and cfg["model_config"]["batchnorm"] is True
    assert base_run.config == cfg


def test_history_columns_and_values(base_run):
    h = pd.read_csv(base_run.run_dir / "history.csv")
    assert list(h.columns[:3]) == ["epoch", "train_loss", "train_acc"]
    assert {"test_loss", "test_acc", "lr", "seconds", "train_acc_clean"} <= set(h.columns)
    assert h["epoch"].tolist() == [0, 1, 2, 3, 4, 5]
    assert h["train_acc"].between(0, 1).all() and (h["lr"] == 1e-3).all()
    # train_acc is measured in eval mode on the run's (corrupted) labels over the whole training set
    run = base_run
    loss, acc = evaluate(run.model, run.data.x_train, run.data.y_train)
    assert acc == pytest.approx(h["train_acc"].iloc[-1]) and loss == pytest.approx(h["train_loss"].iloc[-1])
    _, test_acc = evaluate(run.model, run.data.x_test, run.data.y_test, batch_size=50)
    assert test_acc == pytest.approx(h["test_acc"].iloc[-1])


def test_corruption_record_and_clean_test_labels(base_run):
    clean = load_dataset("digits")
    rec = load_file(base_run.run_dir / "corruption.safetensors")
    assert torch.equal(rec["clean_labels"], clean.y_train)
    assert torch.equal(rec["changed_mask"], rec["labels"] != rec["clean_labels"])
    assert rec["changed_mask"].any()
    run = load_run(base_run.run_dir)
    assert torch.equal(run.data.y_train, rec["labels"]) and torch.equal(run.clean_train_labels, clean.y_train)
    assert torch.equal(run.corrupted_mask, rec["changed_mask"])
    assert torch.equal(run.data.y_test, clean.y_test) and torch.equal(run.data.x_train, clean.x_train)


def test_load_run_epochs(base_run, tmp_path):
    final = load_run(base_run.run_dir)
    assert not final.model.training and final.epoch == 5
    assert _same_weights(final.model.state_dict(), base_run.model.state_dict())
    at2 = load_run(base_run.run_dir, epoch=2)
    assert at2.epoch == 2
    assert _same_weights(at2.model.state_dict(), load_file(base_run.run_dir / "checkpoints/epoch_0002.safetensors"))
    assert _same_weights(load_run(base_run.run_dir, epoch=5).model.state_dict(), final.model.state_dict())
    with pytest.raises(RunDirError, match="no checkpoint for epoch 4 .*available epochs: 0, 2, 3, 5"):
        load_run(base_run.run_dir, epoch=4)
    with pytest.raises(RunDirError, match="does not exist"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not a run directory"):
        load_run(tmp_path / "empty")


def test_evaluate_restores_mode(base_run):
    model = base_run.model.train()
    loss, acc = evaluate(model, base_run.data.x_test, base_run.data.y_test)
    assert model.training and 0 <= acc <= 1 and loss > 0
    model.eval()


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"lr": -1}, "lr must be a learning rate > 0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"until_train_acc": 2}, r"until_train_acc must be an accuracy in \(0, 1\]"),
        ({"until_train_acc": 0}, r"until_train_acc must be an accuracy in \(0, 1\]"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; choose one of adam, sgd"),
        ({"checkpoints": "1,x"}, "checkpoints must be 'log' or a comma list"),
        ({"checkpoints": [0, 2]}, "checkpoints must be 'log' or a list of positive epochs"),
        ({"corrupt": 1.5}, r"corrupt must be a fraction in \[0, 1\]"),
        ({"corrupt_method": "flip"}, "unknown corrupt_method"),
        ({"dropout": 1.0}, "dropout must be"),
        ({"epochs": 3, "until_train_acc": 0.9}, "either epochs or until_train_acc"),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"model": "vgg"}, "unknown model 'vgg'"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"learning_rate": 0.1}, "unknown training setting"),
    ],
)
def test_config_validation_one_line_errors(bad, message, tmp_path):
    with pytest.raises(SingledirError, match=message) as err:
        train({**BASE, **bad}, tmp_path / "x", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()


def test_read_summary_gives_config_and_final_metrics(base_run):
    s = read_summary(base_run.run_dir)
    final = json.loads((base_run.run_dir / "final.json").read_text())
    assert s.name == base_run.run_dir.name and s.epoch == 5 == final["epoch"]
    assert s.config["seed"] == 7 and s.metric("test_acc") == final["test_acc"]
    assert s.target_reached  # no accuracy target
    assert load_run(base_run.run_dir).summary == s


@pytest.mark.parametrize("content", ["{not json", '{"test_acc": 0.5}', "[1, 2]"])
def test_unreadable_final_json_of_a_complete_run_is_a_clear_error(base_run, tmp_path, content):
    import shutil

    run_dir = tmp_path / "damaged"
    shutil.copytree(base_run.run_dir, run_dir)
    (run_dir / "final.json").write_text(content)
    for load in (load_run, read_summary):
        with pytest.raises(RunDirError, match="final.json") as err:  # not a run at epoch=None
            load(run_dir)
        assert "\n" not in str(err.value) and "damaged" in str(err.value)
    (run_dir / "final.json").unlink()
    with pytest.raises(RunDirError, match="cannot read .*final.json"):
        load_run(run_dir)


def test_history_csv_reads_back_the_exact_floats_written(tmp_path):
    """A resumed run re-writes its earlier rows from history.csv: they must come back bit for bit (pandas < 2.2
    parses some floats one ulp off by default)."""
    from singledir.training import rundir as rd

    rng = np.random.default_rng(0)
    rows = [{"epoch": i, "train_loss": float(x), "test_loss": float(y) if i % 3 else float("nan")}
            for i, (x, y) in enumerate(rng.random((500, 2)) * 3)]
    rd.atomic_write_history(tmp_path / rd.HISTORY, rows)
    back = rd.read_history(tmp_path)
    want = rd.history_frame(rows)
    assert back.equals(want)
    rd.atomic_write_history(tmp_path / rd.HISTORY, back.to_dict("records"))  # written again, as resume does
    assert (tmp_path / rd.HISTORY).read_text() == want.to_csv(index=False)
