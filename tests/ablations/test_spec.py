"""ablations/spec.py: what a grid is, built from presets and axes, with typed values throughout."""

import dataclasses
import math
import re
from pathlib import Path

import pytest
import yaml

from ablations import spec
from pretrain.method.synthetic import registry as synthetic
from pretrain.run.errors import UserError
from tests.conftest import REPO


def build(sweep=None, values=None, preset="demo", **kw):
    return spec.build(spec.load_preset(preset), sweep, values or {}, kw.get("seeds"), kw.get("extra", []),
                      kw.get("lincls"))


def test_demo_preset_is_the_paper_layout():
    g = build()
    assert [c.id for c in g.cells] == ["N0-s0-sp0", "N128-s128-sp0", "N128-s128-sp32", "N0-s0-sp0_hcl_tp0.1_b1.0"]
    assert g.probe(REPO / "x", 0).fast and g.seeds == 3 and not g.dropped  # 3 seeds: enough for a paired test
    assert g.objective(g.cells[3]).label == "HCL (beta 1.0, tau+ 0.1)"
    assert g.cfg(g.cells[2], 2, REPO / "x").mochi.s_prime == 32
    assert g.references == [spec.RANDOM_INIT] and g.row_ids()[-1] == "random-init"


def test_sweep_crosses_axes_and_drops_invalid_cells_with_a_reason():
    g = build(["N", "s", "s_prime"], {"N": [0, 64], "s": [0, 32], "s_prime": [0]})
    assert [c.id for c in g.cells] == ["N0-s0-sp0", "N64-s32-sp0"]
    assert g.merged == [("N64-s0-sp0", "the same setting as N0-s0-sp0 (MoCo v2)")]  # N alone mixes nothing
    assert g.dropped == [("N0-s32-sp0", "config mochi: s=32 mixes pairs of distinct hard negatives and needs N >= 2, "
                                        "got N=0 (plain MoCo v2 is N = 0 and every count 0)")]
    # axes left out keep the base preset's value (the demo's s' = 32 needs N >= 1)
    assert [c.id for c in build(["N"], {"N": [0, 64]}).cells] == ["N64"]
    # N > K (the demo's K is 512)
    g = build(["N"], {"N": [256, 1024]})
    assert [c.id for c in g.cells] == ["N256"] and "1024" in g.dropped[0][1]


def test_sweep_without_values_takes_the_presets_axes():
    g = build(["N", "s", "s_prime"])
    # 8 crossed; N 64 and N 128 with s = s' = 0 are both MoCo v2: one cell
    assert len(g.cells) == 7 and {c.values["N"] for c in g.cells} == {64, 128}
    assert g.merged == [("N128-s0-sp0", "the same setting as N64-s0-sp0 (MoCo v2)")]


def test_any_config_key_is_an_axis():
    g = build(["optim.base_lr", "K"], {"optim.base_lr": spec.parse_values("optim.base_lr", "0.03,0.06"),
                                       "K": [512]})
    assert [c.id for c in g.cells] == ["lr0.03_K512", "lr0.06_K512"]
    assert g.cfg(g.cells[1], 0, REPO / "x").optim.base_lr == 0.06


def test_grid_identity_ignores_where_it_runs():
    a, b = build(), build()
    b.profile = "gpu-8"
    assert a.grid_id == b.grid_id
    assert build(seeds=4).grid_id != a.grid_id


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
    assert back_refs(g) == [spec.RANDOM_INIT]
    # a string YAML would read as a mapping, and an int where a float belongs: set as typed values
    assert cfg.run.experiment == "a: b" and type(cfg.optim.base_lr) is float and cfg.run.seed == 1
    assert g.set["optim.epochs"] == 2 and type(g.set["optim.epochs"]) is int  # the preset's mapping, typed
    back = spec.from_json(g.to_json())
    assert back.identity() == g.identity() and back.grid_id == g.grid_id
    assert [type(v) for c in back.cells for v in c.values.values()] == [int] * 12 + [str, float, float]
    # the command line's KEY=VALUE texts are read once, into the same typed values
    assert build(extra=["optim.epochs=3"]).set == build(extra={"optim.epochs": 3}).set


def test_mixing_of_a_cell_comes_from_its_config():
    g = build(["K"], {"K": [512, 1024]})  # N, s, s' from the demo preset
    assert {g.objective(c).label for c in g.cells} == {"MoCHi (128, 128, 32)"}
    g = build(["N", "s", "s_prime"], {"N": [0, 64], "s": [0], "s_prime": [0]})
    assert [g.objective(c).is_plain_moco for c in g.cells] == [True] and g.merged[0][0] == "N64-s0-sp0"


def test_every_row_of_a_grid_is_measured_over_one_analysis_N():
    """The top-N statistics of MoCo v2 and MoCHi rows, and of rows with other queues, count the same
    N hardest negatives: eval.analysis_N, at most the grid's smallest K; not each row's MoCHi N."""
    g = build(["N", "s", "s_prime", "K"], {"N": [0, 128], "s": [0, 128], "s_prime": [0], "K": [256, 1024]})
    assert {c.id for c in g.cells} >= {"N0-s0-sp0_K256", "N128-s128-sp0_K1024"}
    assert g.analysis_N == 256 and {g.cfg(c, 0, Path("x")).eval.analysis_N for c in g.cells} == {256}
    assert spec.from_json(g.to_json()).analysis_N == 256
    g = build(["N"], {"N": [0, 128]}, extra=["eval.analysis_N=64"])
    assert {g.cfg(c, 0, Path("x")).eval.analysis_N for c in g.cells} == {64}


def back_refs(g):
    """The reference rows a grid reads back from its grid.json."""
    return spec.from_json(g.to_json()).references


def test_reference_rows_and_the_baseline(tmp_path):
    ckpt = tmp_path / "moco_v2_200ep.pth.tar"
    ckpt.write_bytes(b"x")
    g = spec.build(spec.load_preset("demo"), None, {}, None, [], None, references=[f"mocov2={ckpt}"],
                   baseline="N128-s128-sp0", random_init=False)
    assert [r.id for r in g.references] == ["released-mocov2"] and g.references[0].path == str(ckpt.resolve())
    assert g.references[0].label == "released: mocov2, evaluated here" and g.baseline == "N128-s128-sp0"
    probe = g.probe(tmp_path / "cells" / "released-mocov2" / "seed1", 1, g.references[0])
    assert probe.source == str(ckpt.resolve()) and probe.dataset == "fashion-mnist" and probe.arch == "resnet18"
    assert probe.seed == 1 and probe.out.endswith("released-mocov2/seed1/lincls-fast")
    r = spec.build(spec.load_preset("demo"), None, {}, None, [], None)
    rand = r.probe(tmp_path / "cells" / "random-init" / "seed2", 2, spec.RANDOM_INIT)
    assert rand.source is None and rand.random_init and rand.pretrain_config.run.seed == 2
    assert rand.out.endswith("random-init/seed2/lincls-fast-random-init")
    back = spec.from_json(g.to_json())
    assert back.references == g.references and back.baseline == "N128-s128-sp0" and back.grid_id == g.grid_id
    for refs, message in [([f"x={tmp_path / 'none.pth'}"], "does not exist"), (["bad name=x"], "NAME=PATH"),
                          ([f"a={ckpt}", f"a={ckpt}"], "must differ")]:
        with pytest.raises(UserError, match=message):
            spec.build(spec.load_preset("demo"), None, {}, None, [], None, references=refs)
    with pytest.raises(UserError, match="--baseline 'N9' is not a cell"):
        spec.build(spec.load_preset("demo"), None, {}, None, [], None, baseline="N9")
    with pytest.raises(UserError, match="reference rows need a probe or a transfer stage"):
        spec.build(spec.load_preset("demo"), None, {}, None, [], "none")


def test_the_loss_is_an_axis_and_undefined_combinations_are_dropped_with_the_reason():
    g = build(["method", "tau_plus", "beta"], {"method": ["infonce", "debiased", "hcl"], "tau_plus": [0.0, 0.1],
                                               "beta": [0.0, 1.0]})
    # debiased at tau+ 0 and HCL at beta 0 and tau+ 0 train as InfoNCE, HCL at beta 0 as the debiased loss
    assert [c.id for c in g.cells] == ["infonce_tp0.0_b0.0", "debiased_tp0.1_b0.0", "hcl_tp0.0_b1.0", "hcl_tp0.1_b1.0"]
    assert g.merged == [
        ("debiased_tp0.0_b0.0", "debiased (Chuang et al., tau+ 0) + MoCHi (128, 128, 32) is MoCHi (128, 128, 32) "
                                "(infonce_tp0.0_b0.0)"),
        ("hcl_tp0.0_b0.0", "HCL (beta 0.0, tau+ 0) + MoCHi (128, 128, 32) is MoCHi (128, 128, 32) (infonce_tp0.0_b0.0)"),
        ("hcl_tp0.1_b0.0", "HCL (beta 0.0, tau+ 0.1) + MoCHi (128, 128, 32) is debiased (Chuang et al., tau+ 0.1) + "
                           "MoCHi (128, 128, 32) (debiased_tp0.1_b0.0)")]
    assert spec.from_json(g.to_json()).merged == g.merged
    reasons = dict(g.dropped)
    assert "infonce takes neither" in reasons["infonce_tp0.1_b0.0"]
    assert "the debiased loss is hcl with beta = 0" in reasons["debiased_tp0.0_b1.0"]
    assert {g.objective(c).label for c in g.cells} >= {"MoCHi (128, 128, 32)", "HCL (beta 1.0, tau+ 0.1) + MoCHi (128, 128, 32)"}
    assert spec.axis("loss.tau_plus").name == "tau_plus" and spec.axis("beta").type is float
    hard = spec.build(spec.load_preset("hardneg-in100"), None, {}, None, [], None)
    assert [hard.objective(c).label for c in hard.cells] == [
        "MoCo v2", "MoCHi (1024, 1024, 128)", "debiased (Chuang et al., tau+ 0.1)", "HCL (beta 1.0, tau+ 0.1)",
        "HCL (beta 1.0, tau+ 0.1) + MoCHi (1024, 1024, 128)", "Ring (outer 0.1, inner 0.1)"]
    assert hard.seeds == 3 and hard.base == "imagenet100"
    ring = hard.cfg(hard.cells[-1], 0, REPO / "x").loss
    assert (ring.method, ring.ring_outer, ring.ring_inner) == ("ring", 0.1, 0.1)


def test_the_ring_is_an_axis_and_a_ring_on_another_loss_is_dropped_with_the_reason():
    g = build(["method", "ring_outer", "ring_inner"], {"method": ["infonce", "ring"], "ring_outer": [0.1, 1.0],
                                                       "ring_inner": [0.0, 0.1]})
    assert [c.id for c in g.cells] == ["infonce_ro1.0_ri0.0", "ring_ro0.1_ri0.0", "ring_ro0.1_ri0.1",
                                       "ring_ro1.0_ri0.1"]
    assert g.merged == [("ring_ro1.0_ri0.0", "Ring (outer 1, inner 0) + MoCHi (128, 128, 32) is MoCHi (128, 128, 32) "
                                             "(infonce_ro1.0_ri0.0)")]  # a ring holding every negative
    reasons = dict(g.dropped)
    assert "belong to the ring loss; infonce takes neither" in reasons["infonce_ro0.1_ri0.1"]
    assert spec.axis("loss.ring_outer").name == "ring_outer" and spec.axis("ring_inner").type is float
    assert "Ring (outer 0.1, inner 0.1) + MoCHi (128, 128, 32)" in {g.objective(c).label for c in g.cells}


def test_the_transfer_stage_runs_through_torchvision_or_detectron2(tmp_path):
    from transfer.stages import D2Settings, FinetuneSettings

    def grid(transfer, **kw):
        return spec.build(spec.load_preset("demo"), None, {}, 2, ["model.arch=resnet50"], "none",
                          transfer=transfer, **kw)

    run_dir = tmp_path / "cells" / "c" / "seed0"
    tv = grid("--task demo-voc --data /d --iters 2").transfer_stage(run_dir)
    assert isinstance(tv, FinetuneSettings) and tv.out == str(run_dir / "transfer-demo-voc")  # the default engine
    d2g = grid("--engine detectron2 --task voc-c4 --data /d/VOCdevkit --gpus 4 --iters 100 "
               "SOLVER.CHECKPOINT_PERIOD 50 DATASETS.TRAIN \"('voc_2007_trainval', 'voc_2012_trainval')\"")
    d2 = d2g.transfer_stage(run_dir)
    assert isinstance(d2, D2Settings) and (d2.task, d2.gpus, d2.iters, d2.device) == ("voc-c4", 4, 100, "cuda")
    assert d2.source == str(run_dir) and d2.out == str(run_dir / "transfer-d2-voc-c4")
    assert d2.opts == ["SOLVER.CHECKPOINT_PERIOD", "50",  # quotes keep a value with spaces whole
                       "DATASETS.TRAIN", "('voc_2007_trainval', 'voc_2012_trainval')"]
    assert d2g.transfer_task == "voc-c4" and d2g.grid_id != grid("--task voc-c4 --data /d/VOCdevkit").grid_id
    assert grid("--engine=detectron2 --task demo-voc --data /d --device cpu").transfer_stage(run_dir).workers == 1
    # the random-init row: detectron2's own initialisation, under the row's folder
    ref = grid("--engine detectron2 --task demo-voc --data /d --device cpu", random_init=True)
    rand = ref.transfer_stage(tmp_path / "cells" / "random-init" / "seed1", spec.RANDOM_INIT)
    assert rand.source is None and rand.random_init
    assert rand.out.endswith("random-init/seed1/transfer-d2-demo-voc-random-init")
    assert spec.from_json(d2g.to_json()).transfer_stage(run_dir) == d2
    for transfer, message in [("--engine mmdet --task voc-c4 --data /d", "--engine 'mmdet': one of torchvision, "
                                                                         "detectron2"),
                              ("--engine detectron2 --task voc-c4 --data /d SOLVER.BASE_LR", "has no value"),
                              ("--engine detectron2 --task voc-c4 --data /d --device cpu --gpus 8", "--device cpu")]:
        with pytest.raises(UserError, match=message):
            grid(transfer)


def test_imagenet100_grid_presets_keep_the_sourced_batch_and_lr():
    for name in ("in100-table1", "in100-memory", "hardneg-in100"):
        g = build(preset=name, extra=["data.path=/datasets/imagenet"])
        cfgs = [g.cfg(c, 0, Path("runs/x")) for c in g.cells]
        assert {(c.optim.batch_size, c.optim.lr) for c in cfgs} == {(128, 0.03)}, name


def test_the_grid_id_comes_from_the_stages_typed_settings_not_their_spelling():
    def grid_id(lincls="--fast", transfer=None):
        return spec.build(spec.load_preset("demo"), None, {}, None, ["model.arch=resnet50"], lincls,
                          transfer=transfer).grid_id

    same = grid_id("--fast --epochs 2")
    assert grid_id("--fast --epochs=2") == same == grid_id("--epochs 2 --fast") == grid_id(["--fast", "--epochs", "2"])
    assert grid_id("--fast --epochs 3") != same and grid_id("--epochs 2") != same
    assert grid_id("--fast --lr=0.5") == grid_id("--fast --lr 0.50")  # typed: a float
    # the seed is each unit's and the loader's processes are how the probe runs, not what it measures
    assert grid_id("--fast --epochs 2 --seed 7 --workers 1") == same
    tv = "--task demo-voc --data /d --iters 2"
    assert grid_id(transfer=tv) == grid_id(transfer="--iters=2 --data=/d --task demo-voc")
    assert grid_id(transfer=tv) != grid_id(transfer="--task demo-voc --data /d --iters 3")
    d2 = "--engine detectron2 --task demo-voc --data /d --device cpu"
    assert grid_id(transfer=d2) == grid_id(transfer="--engine=detectron2 --task=demo-voc --data /d --device=cpu")
    assert grid_id(transfer=d2) != grid_id(transfer=d2 + " --iters 5") != grid_id(transfer=tv)


def baseline_preset(tmp_path, cells, **keys):
    """A grid preset on the demo base with ``baseline: true`` and these cells."""
    p = tmp_path / "plain.yaml"
    p.write_text(yaml.safe_dump({"base": "demo", "cells": cells, "baseline": True, **keys}))
    return spec.build(spec.load_preset(str(p)), None, {}, 1, [], None)


def test_baseline_true_adds_a_plain_moco_cell_only_where_objective_finds_none(tmp_path):
    # N 64 with s = s' = 0 synthesises nothing: it is plain MoCo, whatever its N (Objective.is_plain_moco)
    g = baseline_preset(tmp_path, [{"N": 64, "s": 0, "s_prime": 0}, {"N": 64, "s": 32, "s_prime": 0}])
    assert [c.id for c in g.cells] == ["N64-s0-sp0", "N64-s32-sp0"]
    # a cell that leaves (N, s, s') to the base, where the grid's set makes them synthesise nothing
    g = baseline_preset(tmp_path, [{"K": 512}, {"K": 1024}], set={"mochi.s": 0, "mochi.s_prime": 0})
    assert [c.id for c in g.cells] == ["K512", "K1024"]
    # none is plain MoCo: exactly one is added, first, with the first cell's other axes
    g = baseline_preset(tmp_path, [{"N": 64, "s": 32, "s_prime": 0, "K": 1024}, {"N": 64, "s": 32, "s_prime": 8}])
    assert [c.id for c in g.cells] == ["N0-s0-sp0_K1024", "N64-s32-sp0_K1024", "N64-s32-sp8"]
    assert [g.objective(c).label for c in g.cells][0] == "MoCo v2"
    # and it is MoCo v2 even when the first cell trains another loss
    g = baseline_preset(tmp_path, [{"N": 64, "s": 32, "s_prime": 0, "method": "hcl", "tau_plus": 0.1, "beta": 1.0}])
    assert [g.objective(c).label for c in g.cells] == ["MoCo v2", "HCL (beta 1.0, tau+ 0.1) + MoCHi (64, 32, 0)"]
    assert g.cells[0].id == "N0-s0-sp0_infonce_tp0.0_b0.0"


def stage_grid(tmp_path, lincls, transfer=None):
    """The demo grid (a standard ResNet-50) with these stages in its preset: mappings, argument lists or strings."""
    p = tmp_path / "staged.yaml"
    tree = {k: v for k, v in spec.load_preset("demo").items() if k != "name"}
    p.write_text(yaml.safe_dump({**tree, "lincls": lincls, "transfer": transfer}))
    return spec.build(spec.load_preset(str(p)), None, {}, 1, ["model.arch=resnet50"], None)


def test_a_stage_given_as_a_mapping_is_the_stage_its_arguments_give(tmp_path):
    run_dir = tmp_path / "cells" / "c" / "seed0"
    # lr 5 (an int in YAML) is the float the command line parses: the same settings, the same grid id
    probe = {"fast": True, "train_size": 10000, "test_size": 2000, "workers": 1, "milestones": [20, 25], "lr": 5,
             "tags": {"note": "x"}}
    argv = "--fast --train-size=10000 --test-size 2000 --workers 1 --milestones 20,25 --lr 5 --tag note=x"
    tv = {"task": "demo-voc", "data": "/d", "iters": 2}
    d2 = {"engine": "detectron2", "task": "voc-c4", "data": "/d/VOCdevkit", "gpus": 4,
          "opts": ["SOLVER.CHECKPOINT_PERIOD", 50, "DATASETS.TRAIN", "('voc_2007_trainval', 'voc_2012_trainval')"]}
    d2_argv = ("--engine detectron2 --task voc-c4 --data /d/VOCdevkit --gpus 4 SOLVER.CHECKPOINT_PERIOD 50 "
               "DATASETS.TRAIN \"('voc_2007_trainval', 'voc_2012_trainval')\"")
    tv_argv = "--task demo-voc --data /d --iters 2"
    for (lincls, transfer), (lincls_argv, transfer_argv) in [((probe, tv), (argv, tv_argv)),
                                                               ((probe, d2), (argv, d2_argv)), (({}, None), ([], None))]:
        typed, text = stage_grid(tmp_path, lincls, transfer), stage_grid(tmp_path, lincls_argv, transfer_argv)
        assert typed.probe(run_dir, 0) == text.probe(run_dir, 0)
        assert typed.transfer_stage(run_dir) == text.transfer_stage(run_dir)
        assert typed.grid_id == text.grid_id
        again = spec.from_json(typed.to_json())  # grid.json keeps the mapping
        assert again.probe(run_dir, 0) == typed.probe(run_dir, 0) and again.grid_id == typed.grid_id
    assert stage_grid(tmp_path, probe, d2).transfer_stage(run_dir).opts[:2] == ["SOLVER.CHECKPOINT_PERIOD", "50"]
    # the settings' defaults are the command line's, and the argument list's form is a list too
    assert stage_grid(tmp_path, {}, {"task": "demo-voc", "data": "/d"}).transfer_stage(run_dir) == \
        stage_grid(tmp_path, [], ["--task", "demo-voc", "--data", "/d"]).transfer_stage(run_dir)


def test_the_shipped_presets_give_their_stages_as_mappings_and_keep_their_grid_ids(tmp_path):
    was = {"demo": ["--fast", "--train-size=10000", "--test-size=2000", "--workers=1"]}  # their argument lists
    for name in spec.presets():
        assert isinstance(spec.load_preset(name)["lincls"], dict), name
        now, before = (build(preset=name, extra=["data.path=/datasets/imagenet"], lincls=lincls)
                       for lincls in (None, was.get(name, [])))
        assert now.probe(tmp_path, 0) == before.probe(tmp_path, 0) and now.grid_id == before.grid_id, name


@pytest.mark.parametrize("lincls, transfer, message", [
    ({"fsat": True}, None, r"lincls: unknown key 'fsat'; allowed: arch, batch_size, class_list, data_path, dataset, "
                           r"epochs, fast, .*, workers$"),
    ({"seed": 3}, None, "lincls: unknown key 'seed'"),  # each unit's, not the preset's
    ({"train_size": "many"}, None, "lincls train_size: 'many' is not a valid int"),
    ({"fast": "yes"}, None, "lincls fast: 'yes' is not a valid bool"),
    ({"milestones": "20,25"}, None, "lincls milestones: '20,25' is not a list of int"),
    ({"milestones": [20, "x"]}, None, "lincls milestones: 'x' is not a valid int"),
    ({"preset": "huge"}, None, "lincls: preset 'huge': one of demo, imagenet100, imagenet1k"),
    ({"dataset": "cifar"}, None, "lincls: dataset 'cifar': one of fashion-mnist, imagefolder"),
    ([], {"task": "demo-voc"}, "transfer: give data"),
    ([], {"engine": "mmdet", "task": "voc-c4", "data": "/d"}, "transfer: engine 'mmdet': one of torchvision, "
                                                              "detectron2"),
    ([], {"task": "demo-voc", "data": "/d", "gpus": 2}, r"transfer: unknown key 'gpus'; allowed: batch, ckpt_every, "
                                                       r"data, engine, iters, tags, task, trials"),
    ([], {"task": "nope", "data": "/d"}, "transfer: unknown transfer task 'nope'"),
    ([], {"engine": "detectron2", "task": "voc-c4", "data": "/d", "device": "cpu", "gpus": 8},
     "transfer: --device cpu"),
    (5, None, "lincls: 5 is neither a mapping of its settings nor a list of its arguments"),
    ([], {"engine": "detectron2", "task": "voc-c4", "data": "/d", "opts": ["SOLVER.BASE_LR"]}, "has no value"),
])
def test_a_stage_mapping_is_refused_in_one_line_naming_the_key(tmp_path, lincls, transfer, message):
    with pytest.raises(UserError, match=message) as e:
        stage_grid(tmp_path, lincls, transfer)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("seeds: three\n", "seeds must be an integer >= 1, got 'three'"),
    ("seeds: 0\n", "seeds must be an integer >= 1, got 0"),
    ("seeds: true\n", "seeds must be an integer >= 1, got True"),
    ("profile: 5\n", "profile must be a string, got 5"),
    ("random_init: \"false\"\n", "random_init must be true or false, got 'false'"),
    ("base: [demo]\n", "base must be a string, got ['demo']"),
    ("baseline: 3\n", "baseline must be a cell name or true, got 3"),
    ("seeds: 2\nseeds: 3\n", "key 'seeds' is given twice (first on line 1)"),
])
def test_a_preset_value_of_the_wrong_type_is_refused_naming_it(tmp_path, text, message):
    f = tmp_path / "mine.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=re.escape(message)):
        spec.load_preset(str(f))


@pytest.mark.parametrize("stage, message", [
    ({"lincls": {"train_size": -5}}, "lincls: train_size -5: must be >= 0"),
    ({"lincls": {"epochs": 0}}, "lincls: epochs 0: must be >= 1"),
    ({"lincls": {"lr": 0.0}}, "lincls: lr 0.0: must be a finite number > 0"),
    ({"lincls": {"lrs": [0.1, -1.0]}}, "lincls: lrs -1.0: must be a finite number > 0"),
    ({"lincls": {"val_split": -5}}, "lincls: val_split -5.0: a fraction in [0, 1) or a count of images"),
    ({"lincls": {"milestones": [0, 5]}}, "lincls: milestones [0, 5]: epochs >= 1"),
    ({"transfer": {"task": "demo-voc", "data": "/d", "ckpt_every": 0}}, "--ckpt-every 0: must be >= 1"),
])
def test_a_stage_value_that_cannot_run_is_refused_when_the_grid_is_built(tmp_path, stage, message):
    """Checked where the grid reads its preset, not in a job after pretraining."""
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump({"base": "demo", **stage}))
    with pytest.raises(UserError, match=re.escape(message)):
        spec.build(spec.load_preset(str(f)), None, {}, None, [], None)


DOCUMENTED_SWEEPS = [  # docs/pretraining.md, "Hard-negative strategies"
    ("hardneg-in100", "method,tau_plus,beta", ["mochi.s=0", "mochi.s_prime=0"]),
    ("hardneg-in100", "method,ring_outer,ring_inner", ["mochi.s=0", "mochi.s_prime=0"]),
    ("demo", "N,s,s_prime", []),
    ("synthetic-in100", "N,s,s_prime,s_extrap,mix_stop", ["data.path=/datasets/imagenet"]),  # "Synthetic negatives"
]


@pytest.mark.parametrize("preset, sweep, extra", [(p, None, []) for p in spec.presets()] + DOCUMENTED_SWEEPS)
def test_no_two_cells_of_a_grid_train_the_same_objective(preset, sweep, extra):
    """Every shipped preset and documented sweep: one cell per setting (Config.setting, the objective
    in its reduced form), each other name of it merged with its reason."""
    g = spec.build(spec.load_preset(preset), sweep and sweep.split(","), {}, None, extra, None)
    settings = [g.cfg(c, 0, Path("x")).setting for c in g.cells]
    assert len(set(settings)) == len(settings)
    for cell_id, why in g.merged:
        assert cell_id not in {c.id for c in g.cells} and why


def test_the_dry_run_says_what_each_cell_trains_and_what_it_merged(tmp_path):
    """The sweep the issue found hiding MoCHi in every cell and training one objective under three names."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "ablations/grid.py", "--preset", "hardneg-in100", "--sweep", "method,tau_plus,beta",
                        "--set", "data.path=/datasets/imagenet", "--out", str(tmp_path / "g"), "--dry-run"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "debiased_tp0.05_b0.0  debiased (Chuang et al., tau+ 0.05) + MoCHi (1024, 1024, 128)" in r.stdout
    said = " ".join(r.stdout.split())  # (messages wrap to the terminal's width)
    assert "every cell trains with MoCHi (1024, 1024, 128), from the base preset imagenet100" in said
    assert "merged debiased_tp0.0_b0.0: debiased (Chuang et al., tau+ 0) + MoCHi (1024, 1024, 128) is MoCHi " \
           "(1024, 1024, 128) (infonce_tp0.0_b0.0)" in said
    assert "9 cells x 3 seeds" in said and not (tmp_path / "g").exists()


def test_the_synthetic_kinds_the_control_and_the_window_are_axes_and_one_setting_is_one_cell():
    """The family's counts, the reweighted control and the window's stop are axes named as the
    settings are; a count of 0 is MoCo v2 whatever N or the window, a parameter of a kind the cell
    does not make changes nothing, and a window that ends after the run is no window."""
    g = build(["N", "s", "s_prime", "s_reweight", "s_noise", "sigma", "mix_stop"],
              {"N": [64], "s": [0], "s_prime": [0], "s_reweight": [0, 32], "s_noise": [0], "sigma": [0.01, 0.5],
               "mix_stop": [0, 1, 2]})
    assert [c.id for c in g.cells] == ["N64-s0-sp0-sn0-sr0-sig0.01_mix_stop0", "N64-s0-sp0-sn0-sr32-sig0.01_mix_stop0"]
    assert g.objective(g.cells[1]).label == "MoCo v2 + reweighted 32 (N 64)"
    merged = dict(g.merged)
    assert merged["N64-s0-sp0-sn0-sr0-sig0.5_mix_stop0"] == ("the same setting as "
                                                             "N64-s0-sp0-sn0-sr0-sig0.01_mix_stop0 (MoCo v2)")
    assert merged["N64-s0-sp0-sn0-sr32-sig0.5_mix_stop0"].startswith("the same setting as N64-s0-sp0-sn0-sr32-sig0.01")
    assert merged["N64-s0-sp0-sn0-sr32-sig0.01_mix_stop2"].startswith("the same setting as")  # demo: 2 epochs
    dropped = dict(g.dropped)
    assert dropped["N64-s0-sp0-sn0-sr32-sig0.01_mix_stop1"] == ("config mochi: mix_stop=1 must come after "
                                                                 "mix_start=1 (0: synthesis to the end)")
    cfg = g.cfg(g.cells[1], 0, Path("x"))
    assert [cfg.mochi.synthesises_in(e) for e in range(3)] == [False, True, True]
    assert [dataclasses.replace(cfg.mochi, mix_stop=2).synthesises_in(e) for e in range(3)] == [False, True, False]


def test_the_synthetic_preset_holds_each_kind_alone_all_six_and_the_control():
    g = build(preset="synthetic-in100", extra=["data.path=/datasets/imagenet"])
    labels = [g.objective(c).label for c in g.cells]
    assert labels[:2] == ["MoCo v2", "MoCHi (1024, 1024, 128)"] and not g.merged and not g.dropped
    made = [g.objective(c).mixing.counts for c in g.cells]
    for kind in ("s", "s_prime", "s_noise", "s_extrap", "s_grad", "s_adv"):  # each alone
        assert any(m[kind] and sum(m.values()) == m[kind] for m in made), kind
    assert any(all(m[k] for k in ("s", "s_prime", "s_noise", "s_extrap", "s_grad", "s_adv")) for m in made)
    counts = {m["s_reweight"] for m in made if m["s_reweight"]}
    assert counts == {1024 + 128, 3 * 256 + 3 * 64, 256, 64}  # MoCHi's count, SynCo's, each kind alone's
    # every row that makes new points has its control in the grid, so the tables compare them
    from ablations import controls

    found = controls.controls(g)
    assert set(found) == {c.id for c, m in zip(g.cells, made) if any(n for k, n in m.items() if k != "s_reweight")}
    assert found["N1024-s1024-sp128"] == "N1024-s0-sp0-sr1152"
    assert g.seeds == 3 and g.cfg(g.cells[0], 0, Path("x")).mochi.mix_start == 10


# The synthetic preset at demo size: real Fashion-MNIST, a ResNet-18 at 32 px, two steps a cell.
DEMO_SIZE = ["model.arch=resnet18", "data.dataset=fashion-mnist", "data.class_list=null", "data.image_size=32",
             "moco.K=1024", "optim.batch_size=32", "data.subset=64", "mochi.mix_start=0", "data.num_workers=0",
             "run.max_steps=2", "run.log_every=1", "eval.every=0", "moco.shuffle_bn_groups=2", "run.amp=false"]


@pytest.mark.slow
def test_the_synthetic_preset_trains_every_cell_at_demo_size(tmp_path):
    """Each cell of synthetic-in100, at demo size, trains two real steps on what it says: each of its
    kinds' cosines logged and no other kind's, the run tagged for its method."""
    from pretrain.method.moco import MoCo
    from pretrain.run.tracking import read_metrics
    from pretrain.train import train

    g = spec.build(spec.load_preset("synthetic-in100"), None, {}, 1, DEMO_SIZE, None)
    assert len(g.cells) == 13 and not g.dropped
    seen = {}
    for cell in g.cells:
        cfg = g.cfg(cell, 0, tmp_path / cell.id, {"run.tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})
        model = train(cfg)
        assert isinstance(model, MoCo)
        rows = [r for r in read_metrics(tmp_path / cell.id) if "loss" in r]
        assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows), cell.id
        m = cfg.objective.mixing
        logged = {k for r in rows for k in r if k.startswith("syn_") and k.endswith("_cos")}
        assert logged == {f"syn_{synthetic.KINDS[k].stat}_cos" for k, n in m.counts.items() if n}, cell.id
        seen[cell.id] = cfg.objective.method
    assert sorted(set(seen.values())) == ["mochi", "mocov2", "synthetic"]
