"""Grouped (stacked) training: a network's weights do not depend on its group; resume; run directories; runner."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from singledir.errors import SingledirError
from singledir.experiments.runner import Runner, plan_groups, run_name
from singledir.training import TrainConfig, load_run, train
from singledir.training.grouped import group_key, train_group

BASE = dict(dataset="digits", width=16, train_subset=300, batch_size=64, lr=3e-3, checkpoints="2,5",
            history_every=3)


def _configs(n: int) -> list[dict]:
    """n networks differing in every per-network setting: seed, labels, lr, weight decay, dropout, stopping."""
    out = []
    for s in range(n):
        c = dict(BASE, seed=s, corrupt=[0.0, 0.5][s % 2], lr=[3e-3, 1e-2, 1e-3][s % 3],
                 weight_decay=[0.0, 1e-3][s % 4 == 3], dropout=[0.0, 0.2, 0.0, 0.1][s % 4])
        if s % 5 == 0:
            c["epochs"] = 6
        else:
            c.update(until_train_acc=0.8, max_epochs=12)
        out.append(c)
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _hist(run) -> pd.DataFrame:
    return run.history.drop(columns=["seconds"])


@pytest.fixture(scope="module")
def group32(tmp_path_factory):
    root = tmp_path_factory.mktemp("group")
    configs = _configs(32)
    return configs, train_group(configs, [root / f"n{i}" for i in range(32)], progress=False)


def test_alone_equals_inside_a_group_of_32(group32, tmp_path):
    configs, runs = group32
    stops = {r.epoch for r in runs}
    assert len(stops) >= 3  # networks stopped at different epochs inside the group
    for i in (0, 1, 3, 6, 31):  # fixed epochs, until_train_acc (early and late), dropout, weight decay
        alone = train(configs[i], tmp_path / f"alone{i}", progress=False)  # train() of an MLP: a group of one
        assert alone.config["engine"] == "stacked"
        assert alone.epoch == runs[i].epoch and alone.final["stopped_reason"] == runs[i].final["stopped_reason"]
        assert _same(alone.model.state_dict(), runs[i].model.state_dict())
        pd.testing.assert_frame_equal(_hist(alone), _hist(runs[i]))
        for e in alone.checkpoint_epochs[:-1]:
            name = f"checkpoints/epoch_{e:04d}.safetensors"
            assert _same(load_file(alone.run_dir / name), load_file(runs[i].run_dir / name))


@pytest.mark.parametrize("workers", [2, 3])
def test_parts_side_by_side_equal_one_stack(group32, tmp_path, monkeypatch, workers):
    # the group cut into parts trained by threads, each part on one OpenMP / MKL thread (5 networks in 3
    # parts: 2, 2 and 1 with its ghost), at torch's 2 intra-op threads: the same numbers as one stack
    import singledir.training.grouped as grouped

    configs, runs = group32
    monkeypatch.setattr(grouped, "stack_workers", lambda device: workers)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parts = train_group(configs[:5], [tmp_path / f"p{i}" for i in range(5)], progress=False)
        assert torch.get_num_threads() == 2  # the caller's count is left alone
    finally:
        torch.set_num_threads(before)
    for i, r in enumerate(parts):
        assert r.epoch == runs[i].epoch
        assert _same(r.model.state_dict(), runs[i].model.state_dict())
        pd.testing.assert_frame_equal(_hist(r), _hist(runs[i]))


def test_map_parts_order_and_errors():
    from singledir.training import threads
    from singledir.training.threads import map_parts

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:  # each part on one thread (where this torch build has the thread-local setters), the caller's count kept
        got = map_parts(lambda x: (x, torch.get_num_threads()), [1, 2, 3])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert [g[0] for g in got] == [1, 2, 3]
    assert all(g[1] == 1 for g in got) or threads.setters() is None

    def fail(x):
        if x == 2:
            raise ValueError("part 2")
        return x

    with pytest.raises(ValueError, match="part 2"):
        map_parts(fail, [1, 2, 3])


def test_group_run_directories_are_complete_and_loadable(group32):
    configs, runs = group32
    for c, r in zip(configs[:4], runs[:4]):
        for f in ("config.json", "history.csv", "model.safetensors", "corruption.safetensors", "state.pt",
                  "final.json", "COMPLETE"):
            assert (r.run_dir / f).is_file(), f
        loaded = load_run(r.run_dir)
        assert _same(loaded.model.state_dict(), r.model.state_dict())
        assert loaded.epoch == r.epoch and loaded.config["seed"] == c["seed"]
        assert loaded.checkpoint_epochs == [e for e in (0, 2, 5) if e <= r.epoch] + ([r.epoch] if r.epoch not in (2, 5) else [])
        assert torch.equal(loaded.train_labels, r.train_labels)
        # the test set only where a number is used: epoch 0, every history_every, checkpoints, the last epoch
        h = loaded.history
        tested = set(h.loc[h["test_acc"].notna(), "epoch"])
        want = {0, r.epoch} | {e for e in range(r.epoch + 1) if e % 3 == 0 or e in (2, 5)}
        assert tested == want
        assert h["train_acc"].notna().all()
        assert not math.isnan(loaded.final["test_acc"])


def test_resume_of_an_interrupted_group_equals_uninterrupted(group32, tmp_path):
    configs, runs = group32
    pick = [0, 1, 2, 3, 4, 5]
    sub = [configs[i] for i in pick]
    outs = [tmp_path / f"r{i}" for i in pick]

    def ctrl_c(epoch, metrics, model):
        if epoch == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_group(sub, outs, progress=False, callbacks=[ctrl_c])
    assert not any((o / "COMPLETE").exists() for o in outs[1:])
    resumed = train_group(sub, outs, resume=True, progress=False)
    for i, r in zip(pick, resumed):
        assert _same(r.model.state_dict(), runs[i].model.state_dict())
        pd.testing.assert_frame_equal(_hist(r), _hist(runs[i]))
    # a single network resumed with train(): the same engine, the same weights
    out = tmp_path / "single"
    with pytest.raises(KeyboardInterrupt):
        train(configs[1], out, progress=False, callbacks=[ctrl_c])
    assert _same(train(configs[1], out, resume=True, progress=False).model.state_dict(), runs[1].model.state_dict())


def test_sgd_momentum_weight_decay_alone_equals_grouped(tmp_path):
    cfgs = [dict(BASE, optimizer="sgd", momentum=0.9, lr=[0.05, 0.02][s % 2], weight_decay=[0.0, 1e-3][s % 2],
                 seed=s, epochs=4, checkpoints=None) for s in range(3)]
    runs = train_group(cfgs, [tmp_path / f"g{i}" for i in range(3)], progress=False)
    alone = train(cfgs[1], tmp_path / "alone", progress=False)
    assert _same(alone.model.state_dict(), runs[1].model.state_dict())


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_stacked_update_follows_torch_optim(tmp_path, optimizer):
    # the hand-written update is torch.optim's arithmetic: one epoch of both engines agrees to float rounding
    c = dict(BASE, optimizer=optimizer, lr=1e-2 if optimizer == "sgd" else 1e-3, weight_decay=1e-3, epochs=1,
             checkpoints=None)
    a = train(dict(c, engine="stacked"), tmp_path / "stacked", progress=False).model.state_dict()
    b = train(dict(c, engine="reference"), tmp_path / "reference", progress=False).model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-5), k


def test_engine_is_recorded_and_hashed():
    assert TrainConfig(dataset="digits").engine == "stacked"
    assert TrainConfig(dataset="digits", batchnorm=True).engine == "reference"
    assert TrainConfig(dataset="digits", model="convnet").engine == "reference"
    with pytest.raises(SingledirError, match="engine 'stacked' trains MLPs"):
        TrainConfig(dataset="digits", model="convnet", engine="stacked")
    with pytest.raises(SingledirError, match="history_every"):
        TrainConfig(dataset="digits", history_every=0)
    c = dict(BASE, epochs=5)
    assert run_name(c) != run_name(dict(c, engine="reference"))
    assert run_name(c) == run_name(dict(c, engine="auto"))


def test_group_keys_and_plan():
    a = dict(BASE, epochs=5)
    assert group_key(a) == group_key(dict(a, seed=3, lr=0.1, corrupt=1.0, dropout=0.3, until_train_acc=0.9,
                                          epochs=None))
    assert group_key(a) != group_key(dict(a, batch_size=32))
    assert group_key(a) != group_key(dict(a, width=32))
    assert group_key(dict(a, batchnorm=True)) is None
    configs = [dict(a, seed=s) for s in range(70)] + [dict(a, batch_size=32, seed=0), dict(a, model="convnet")]
    tasks = plan_groups(configs, jobs=2)
    assert sorted(i for t in tasks for i in t) == list(range(72))
    assert sorted(len(t) for t in tasks) == [1, 1, 17, 17, 18, 18]
    assert sorted(len(t) for t in plan_groups(configs[:10], jobs=2)) == [5, 5]


def test_train_group_rejects_mixed_architectures(tmp_path):
    with pytest.raises(SingledirError, match="one architecture"):
        train_group([dict(BASE, epochs=5), dict(BASE, epochs=5, width=8)], [tmp_path / "a", tmp_path / "b"],
                    progress=False)
    with pytest.raises(SingledirError, match="same out_dir"):
        train_group([dict(BASE, epochs=5)] * 2, [tmp_path / "a", tmp_path / "a"], progress=False)


def test_runner_trains_groups_and_reuses_them(tmp_path):
    configs = [dict(BASE, seed=s, epochs=2, checkpoints=None) for s in range(5)]
    with Runner(tmp_path / "runs", progress=False) as runner:
        dirs = runner.train(configs)
        assert sorted(runner.trained) == sorted(d.name for d in dirs) and not runner.reused
    alone = train(configs[2], tmp_path / "alone", progress=False)
    assert _same(load_run(dirs[2]).model.state_dict(), alone.model.state_dict())
    journal = (tmp_path / "runs" / ".journal" / f"{dirs[0].name}.jsonl").read_text().splitlines()
    assert json.loads(journal[-1])["group"] == 5
    with Runner(tmp_path / "runs", progress=False) as runner:
        assert runner.train(configs) == dirs
        assert not runner.trained and len(runner.reused) == 5
