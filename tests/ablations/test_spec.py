"""ablations/spec.py: what a grid is, built from presets and axes, with typed values throughout."""

import pytest

from ablations import spec
from pretrain.run.errors import UserError
from tests.conftest import REPO


def build(sweep=None, values=None, preset="demo", **kw):
    return spec.build(spec.load_preset(preset), sweep, values or {}, kw.get("seeds"), kw.get("extra", []),
                      kw.get("lincls"))


def test_demo_preset_is_the_paper_layout():
    g = build()
    assert [c.id for c in g.cells] == ["N0-s0-sp0", "N128-s128-sp0", "N128-s0-sp32", "N128-s128-sp32"]
    assert g.lincls[0] == "--fast" and g.seeds == 2 and not g.dropped
    assert g.cfg(g.cells[3], 2, REPO / "x").mochi.s_prime == 32


def test_sweep_crosses_axes_and_drops_invalid_cells_with_a_reason():
    g = build(["N", "s", "s_prime"], {"N": [0, 64], "s": [0, 32], "s_prime": [0]})
    assert [c.id for c in g.cells] == ["N0-s0-sp0", "N64-s0-sp0", "N64-s32-sp0"]
    assert g.dropped == [("N0-s32-sp0", "config mochi: s=32 mixes pairs of distinct hard negatives and needs N >= 2, "
                                        "got N=0")]
    # axes left out keep the base preset's value (the demo's s' = 32 needs N >= 1)
    assert [c.id for c in build(["N"], {"N": [0, 64]}).cells] == ["N64"]
    # N > K (the demo's K is 512)
    g = build(["N"], {"N": [256, 1024]})
    assert [c.id for c in g.cells] == ["N256"] and "1024" in g.dropped[0][1]


def test_sweep_without_values_takes_the_presets_axes():
    g = build(["N", "s", "s_prime"])
    assert len(g.cells) == 8 and {c.values["N"] for c in g.cells} == {64, 128}


def test_any_config_key_is_an_axis():
    g = build(["optim.base_lr", "K"], {"optim.base_lr": spec.parse_values("optim.base_lr", "0.03,0.06"),
                                       "K": [512]})
    assert [c.id for c in g.cells] == ["lr0.03_K512", "lr0.06_K512"]
    assert g.cfg(g.cells[1], 0, REPO / "x").optim.base_lr == 0.06


def test_grid_identity_ignores_where_it_runs():
    a, b = build(), build()
    b.profile = "gpu-8"
    assert a.grid_id == b.grid_id
    assert build(seeds=3).grid_id != a.grid_id


def test_axes_have_one_name_and_one_type():
    assert spec.axis("mochi.s_prime") == spec.axis("s_prime") == spec.Axis("s_prime", "mochi.s_prime")
    assert spec.axis("optim.base_lr").name == "lr" and spec.axis("lr").type is float
    assert spec.axis("s_prime").parse("0, 32,128") == [0, 32, 128]
    assert spec.axis("lr").parse("1,0.5") == [1.0, 0.5] and all(type(v) is float for v in spec.axis("lr").parse("1,2"))
    with pytest.raises(UserError, match="axis s_prime: 'abc' is not a valid int for mochi.s_prime"):
        spec.axis("s_prime").parse("32,abc")
    with pytest.raises(UserError, match="unknown axis 'sp'"):
        spec.axis("sp")
    # the same axis under two spellings is one axis, and given twice it is refused
    g = build(["mochi.N"], {"N": [64]})
    assert list(g.cells[0].values) == ["N"] and g.table_rows == ["N"]
    with pytest.raises(UserError, match="--sweep names axis N more than once"):
        build(["N", "mochi.N"], {"N": [64]})


def test_values_keep_their_types_from_preset_to_config_and_back():
    g = build(extra={"run.experiment": "a: b", "optim.base_lr": 1})
    cfg = g.cfg(g.cells[1], 1, REPO / "x")
    # a string YAML would read as a mapping, and an int where a float belongs: set as typed values
    assert cfg.run.experiment == "a: b" and type(cfg.optim.base_lr) is float and cfg.run.seed == 1
    assert g.set["optim.epochs"] == 3 and type(g.set["optim.epochs"]) is int  # the preset's mapping, typed
    back = spec.from_json(g.to_json())
    assert back.identity() == g.identity() and back.grid_id == g.grid_id
    assert [type(v) for c in back.cells for v in c.values.values()] == [int] * 12
    # the command line's KEY=VALUE texts are read once, into the same typed values
    assert build(extra=["optim.epochs=3"]).set == build(extra={"optim.epochs": 3}).set


def test_mixing_of_a_cell_comes_from_its_config():
    g = build(["K"], {"K": [512, 1024]})  # N, s, s' from the demo preset
    assert {g.mixing(c).label for c in g.cells} == {"MoCHi (128, 128, 32)"}
    g = build(["N", "s", "s_prime"], {"N": [0, 64], "s": [0], "s_prime": [0]})
    assert [g.mixing(c).is_plain_moco for c in g.cells] == [True, True]
