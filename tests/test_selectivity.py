"""Class selectivity, mutual information and selectivity-vs-importance correlations on designed data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import singledir as sd
from singledir.errors import SingledirError
from singledir.reliance.correlation import selectivity_vs_importance, spearman_with_ci
from singledir.reliance.selectivity import discretize_activity, selectivity_from_activations


class Passthrough(nn.Module):
    """A "model" whose unit layer ``act`` outputs exactly its input: activations are designed by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.Identity()
        self.unit_layers = ["act"]

    def forward(self, x):
        return self.act(x)


def designed(n: int = 5000, seed: int = 0):
    """Balanced labels 0..9 and five designed units (see the asserts for what each one is)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    y = y[torch.randperm(n, generator=g)]
    x = torch.zeros(n, 6)
    x[:, 0] = (y == 3).float() * (1.0 + torch.rand(n, generator=g))  # fires only for class 3
    x[:, 1] = 1.0  # same activity for every class
    x[:, 2] = y.float() + 1.0  # activity determines the class
    x[:, 3] = 0.0  # dead
    x[:, 4] = torch.relu(torch.randn(n, generator=g))  # independent of the class
    x[:, 5] = y.float()  # class means 0..9
    return x, y


@pytest.fixture(scope="module")
def designed_result():
    x, y = designed()
    return x, y, sd.class_selectivity(Passthrough(), (x, y), ["act"])


def test_known_selectivity_and_preferred_class(designed_result):
    _, _, df = designed_result
    assert list(df.columns) == ["layer", "unit", "selectivity", "mutual_info", "preferred_class",
                                "mean_activity", "dead"]
    assert (df.layer == "act").all() and df.unit.tolist() == list(range(6))
    r = df.set_index("unit")
    assert r.loc[0, "selectivity"] == pytest.approx(1.0, abs=1e-6)
    assert r.loc[0, "preferred_class"] == 3
    assert r.loc[1, "selectivity"] == pytest.approx(0.0, abs=1e-12)
    # class means 0..9: mu_max = 9, mu_rest = mean(0..8) = 4 -> 5 / 13
    assert r.loc[5, "selectivity"] == pytest.approx(5 / 13, abs=1e-6)
    assert r.loc[5, "preferred_class"] == 9
    assert r.loc[1, "mean_activity"] == pytest.approx(1.0)
    assert r.loc[5, "mean_activity"] == pytest.approx(4.5)


def test_mutual_information_bounds(designed_result):
    x, y, df = designed_result
    r = df.set_index("unit")
    # a unit whose activity determines the class carries log2(10) bits (labels exactly balanced)
    assert r.loc[2, "mutual_info"] == pytest.approx(math.log2(10), abs=1e-9)
    assert r.loc[1, "mutual_info"] == pytest.approx(0.0, abs=1e-12)
    # a class-3 detector: I = H(1/10) bits exactly (zero bin vs the rest)
    h = -(0.1 * math.log2(0.1) + 0.9 * math.log2(0.9))
    assert r.loc[0, "mutual_info"] == pytest.approx(h, abs=1e-9)
    # independent unit: plug-in bias ~ (B-1)(C-1)/(2N ln2) = 16*9/(2*5000*ln2) ~ 0.021 bits
    bias = 16 * 9 / (2 * len(y) * math.log(2))
    assert 0.0 <= r.loc[4, "mutual_info"] < 2 * bias
    mm = sd.class_selectivity(Passthrough(), (x, y), ["act"], miller_madow=True).set_index("unit")
    assert abs(mm.loc[4, "mutual_info"]) < 0.3 * bias
    # 10 occupied bins, 10 classes, 10 occupied cells: correction = (9 + 9 - 9) / (2 N ln 2)
    assert mm.loc[2, "mutual_info"] - r.loc[2, "mutual_info"] == pytest.approx(9 / (2 * len(y) * math.log(2)))


def test_dead_unit(designed_result):
    _, _, df = designed_result
    r = df.set_index("unit")
    assert r.dead.tolist() == [False, False, False, True, False, False]
    assert r.loc[3, "selectivity"] == 0.0 and r.loc[3, "mutual_info"] == 0.0
    assert r.loc[3, "preferred_class"] == -1


def test_conv_maps_averaged_over_space_and_exact_dead_rule():
    n = 400
    y = torch.arange(n) % 4
    x = torch.zeros(n, 3, 4, 4)
    x[:, 0, 1, 2] = (y == 2).float() * 8.0  # one pixel, class 2 only -> spatial mean 0.5
    x[:, 0, 0, 0] = 1.0  # constant pixel everywhere
    x[:, 1, 0, 0] = 1.0  # +1 and -1 average to 0 for every example, yet the map is not dead
    x[:, 1, 3, 3] = -1.0
    with pytest.raises(SingledirError, match="unit_dim"):  # a 4-D input passed through: ambiguous
        sd.class_selectivity(Passthrough(), (x, y), "act")
    df = sd.class_selectivity(Passthrough(), (x, y), "act", unit_dim=1).set_index("unit")
    # channel 0: spatial means 1/16 + 0.5 (class 2) vs 1/16 -> (0.5625 - 0.0625) / (0.625)
    assert df.loc[0, "preferred_class"] == 2
    assert df.loc[0, "selectivity"] == pytest.approx(0.5 / 0.625, abs=1e-6)
    assert df.loc[0, "mean_activity"] == pytest.approx(1 / 16 + 0.5 / 4)
    ref = selectivity_from_activations(x.mean(dim=(2, 3)), y)
    assert df.loc[0, "mutual_info"] == pytest.approx(ref.loc[0, "mutual_info"])
    assert df.dead.tolist() == [False, False, True]


def test_model_unchanged_and_batching_invariant():
    torch.manual_seed(0)
    model = sd.build_model("mlp", (1, 6, 6), 5, width=16, seed=1)
    model.train()
    x = torch.randn(230, 1, 6, 6)
    y = torch.arange(230) % 5
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = sd.class_selectivity(model, (x, y), ["hidden.0", "hidden.1"], batch_size=37)
    b = sd.class_selectivity(model, [(x[:100], y[:100]), (x[100:], y[100:])], ["hidden.0", "hidden.1"])
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6)
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(a) == 32 and set(a.layer) == {"hidden.0", "hidden.1"}
    assert a.selectivity.between(0, 1).all()


def test_quantile_bins_match_rank_definition():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-3, 6, (53, 7), generator=g).float()  # ties, zeros and negative values
    x[:, 6] = 0.0
    codes = discretize_activity(x, 4)
    for u in range(7):
        v = x[:, u].numpy()
        nz = np.sort(v[v != 0])
        for i in range(len(v)):
            if v[i] == 0:
                assert codes[i, u] == 0
            else:
                r = np.searchsorted(nz, v[i], "left")  # start of v's tie group among the non-zeros
                assert codes[i, u] == 1 + (r * 4) // len(nz)


def test_mi_capped_by_bins():
    y = torch.arange(1000) % 10
    df = selectivity_from_activations((y.float() + 1)[:, None], y, bins=3)
    assert df.mutual_info[0] <= math.log2(4) + 1e-9


def test_512_units_by_10k_examples_of_pure_noise_carry_no_information():
    # (no wall-clock assertion: a loaded machine would fail it by chance; benchmarks/ times it)
    g = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(10_000, 512, generator=g))
    y = torch.randint(0, 10, (10_000,), generator=g)
    df = selectivity_from_activations(acts, y)
    assert len(df) == 512 and df.mutual_info.max() < 0.05


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layers": ["nope"]}, "unknown layer"),
        ({"layers": ["act"], "bins": 0}, "bins"),
        ({"layers": ["act"], "data": (torch.ones(4, 2), torch.zeros(4, dtype=torch.long))}, "two classes"),
        ({"layers": ["act"], "data": (torch.full((4, 2), float("nan")), torch.arange(4))}, "NaN"),
        ({"layers": ["act"], "data": (torch.ones(4, 2), torch.arange(3))}, "labels"),
    ],
)
def test_bad_input_raises_one_line(kwargs, match):
    args = {"data": (torch.rand(6, 2), torch.arange(6) % 2), **kwargs}
    with pytest.raises(SingledirError, match=match) as err:
        sd.class_selectivity(Passthrough(), args["data"], args["layers"], bins=args.get("bins", 16))
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- correlation
def _units(n=200, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.random(n)
    return pd.DataFrame(
        {
            "layer": np.repeat(["l1", "l2"], n // 2),
            "unit": np.tile(np.arange(n // 2), 2),
            "selectivity": s,
            "mutual_info": rng.random(n),
            "accuracy_drop": -s + rng.normal(0, 0.3, n),
            "dead": np.zeros(n, bool),
        }
    )


def test_correlation_table_matches_scipy_and_is_seeded():
    from scipy import stats

    units = _units()
    out = selectivity_vs_importance(units=units, n_boot=300, seed=4)
    assert out.layer.tolist() == ["l1", "l1", "l2", "l2", "all", "all"]
    assert out.measure.tolist() == ["selectivity", "mutual_info"] * 3
    row = out[(out.layer == "all") & (out.measure == "selectivity")].iloc[0]
    ref = stats.spearmanr(units.selectivity, units.accuracy_drop)
    assert row.rho == pytest.approx(ref.statistic) and row.p_value == pytest.approx(ref.pvalue)
    assert row.rho < -0.5 and row.ci_low <= row.rho <= row.ci_high < 0 and row.note == ""
    assert row.n_units == 200
    again = selectivity_vs_importance(units=units, n_boot=300, seed=4)
    pd.testing.assert_frame_equal(out, again)
    other = selectivity_vs_importance(units=units, n_boot=300, seed=5)
    assert not np.allclose(out.ci_low, other.ci_low)


def test_correlation_nan_safe_and_drops_dead():
    units = _units()
    units["mutual_info"] = 0.5  # constant
    units.loc[:4, "dead"] = True
    units.loc[7, "accuracy_drop"] = np.nan
    out = selectivity_vs_importance(units=units, n_boot=50)
    mi = out[out.measure == "mutual_info"]
    assert mi.rho.isna().all() and mi.p_value.isna().all() and mi.ci_low.isna().all()
    assert mi.note.str.contains("constant mutual_info").all()
    l1 = out[(out.layer == "l1") & (out.measure == "selectivity")].iloc[0]
    assert l1.n_units == 100 - 5 - 1 and l1.n_dropped == 6
    assert np.isfinite(l1.rho)
    few = spearman_with_ci([1.0, 2.0], [2.0, 1.0])
    assert math.isnan(few[0]) and "fewer than 3" in few[4]


def test_correlation_accepts_a_pair_of_tables_and_perfect_rank():
    sel = pd.DataFrame({"layer": "a", "unit": range(20), "selectivity": np.arange(20.0),
                        "mutual_info": np.arange(20.0) ** 2, "dead": False})
    imp = pd.DataFrame({"layer": "a", "unit": range(20), "accuracy_drop": np.arange(20.0) * 0.01,
                        "loss_increase": -np.arange(20.0)})
    out = selectivity_vs_importance(units=(sel, imp), n_boot=100)
    assert np.allclose(out.rho, 1.0) and np.allclose(out.ci_low, 1.0)
    out = selectivity_vs_importance(units=(sel, imp), importance="loss_increase", measures="selectivity")
    assert np.allclose(out.rho, -1.0) and out.importance.eq("loss_increase").all()
    with pytest.raises(SingledirError, match="lacks column"):
        selectivity_vs_importance(units=sel)
    with pytest.raises(SingledirError, match="either model"):
        selectivity_vs_importance()


def test_correlation_from_a_model_matches_precomputed_tables():
    torch.manual_seed(0)
    model = sd.build_model("mlp", (1, 5, 5), 4, width=10, seed=2)
    x = torch.randn(120, 1, 5, 5)
    y = torch.arange(120) % 4
    layers = ["hidden.0", "hidden.1"]
    direct = sd.selectivity_vs_importance(model, (x, y), layers, n_boot=100, seed=1)
    sel = sd.class_selectivity(model, (x, y), layers)
    imp = sd.unit_importance(model, (x, y), layers, progress=False)
    pre = selectivity_vs_importance(units=(sel, imp), n_boot=100, seed=1)
    pd.testing.assert_frame_equal(direct, pre)
    assert direct.layer.tolist() == ["hidden.0", "hidden.0", "hidden.1", "hidden.1", "all", "all"]
