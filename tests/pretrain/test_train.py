"""Real pretraining runs on Fashion-MNIST: MLflow logging, idempotent restart, SIGKILL resume, DDP."""

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from mlflow.tracking import MlflowClient

from pretrain.run import checkpoint, rundir
from pretrain.run.errors import UserError
from pretrain.run.tracking import read_metrics
from pretrain.train import train

from tests.conftest import TINY, free_port, tiny_cfg

pytestmark = pytest.mark.slow


def test_end_to_end_logs_to_mlflow_and_restart_is_idempotent(tmp_path, mlflow_server):
    out = tmp_path / "run"
    cfg = tiny_cfg(out, f"run.tracking_uri={mlflow_server}", "run.experiment=e2e-test", "eval.every=1",
                   "eval.knn_train_size=256", "eval.heldout_size=128")
    train(cfg)
    client = MlflowClient(mlflow_server)
    run_id = (out / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["mochi.N"] == "32" and run.data.tags["stage"] == "pretrain"
    loss = client.get_metric_history(run_id, "loss")
    assert [m.step for m in loss] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert all(0 < m.value < 20 for m in loss)
    assert {"acc_moco", "acc_all", "lr", "images_per_s", "syn_s_cos", "syn_top1_share", "syn_top10_share",
            "neg_top1_cos", "neg_top10_cos", "neg_topN_cos", "false_neg_share"} <= set(run.data.metrics)
    # The monitor ran after each of the two epochs.
    knn = client.get_metric_history(run_id, "knn_top1")
    assert [m.step for m in knn] == [8, 16] and all(10 <= m.value <= 100 for m in knn)
    assert 0 <= run.data.metrics["alignment"] <= 4 and run.data.metrics["uniformity"] <= 0
    # Mixing starts at epoch 1 (step 9 on): synthetic stats only from then on.
    assert min(m.step for m in client.get_metric_history(run_id, "syn_s_cos")) == 10
    # The JSON-lines file holds the same points.
    assert sorted({r["step"] for r in read_metrics(out)}) == [2, 4, 6, 8, 10, 12, 14, 16]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 16 and summary["run_id"] == run_id
    # The linear probe logs as a child of the pretraining run.
    from pretrain import lincls

    assert lincls.main([str(out), "--fast", "--train-size", "256", "--test-size", "128", "--epochs", "1",
                        "--workers", "0"]) == 0
    child_id = (out / "lincls-fast" / "mlflow_run_id").read_text()
    child = client.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == run_id and child.data.tags["mode"] == "fast"
    assert "top1_last" in child.data.metrics
    # Running the same command again changes nothing and opens no second MLflow run.
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    train(cfg)
    exp = client.get_experiment_by_name("e2e-test")
    assert len(client.search_runs([exp.experiment_id], "tags.stage = 'pretrain'")) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ckpts


def test_tracking_store_down_keeps_training_and_the_jsonl(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    out = tmp_path / "run"
    train(tiny_cfg(out, "run.tracking_uri=http://127.0.0.1:9", "run.max_steps=4"))
    assert [r["step"] for r in read_metrics(out)] == [2, 4]
    assert checkpoint.load_latest(out / "checkpoints")[0]["global_step"] == 4


def test_class_oracle_variant_trains(tmp_path):
    """The class oracle removes each query's same-class queue entries from its negatives: beside a
    plain run from the same seed, the very same logits lose those terms. K = 64: two steps of 32 fill
    the queue with labelled keys."""
    runs = {}
    for name, extra in (("plain", []), ("oracle", ["moco.oracle=true"])):
        train(tiny_cfg(tmp_path / name, *extra, "moco.K=64", "run.max_steps=4", "run.log_every=2"))
        runs[name] = read_metrics(tmp_path / name)
    plain, oracle = runs["plain"], runs["oracle"]
    assert [r["step"] for r in plain] == [r["step"] for r in oracle] == [2, 4]
    # Step 1's queue held only unlabelled random vectors, so the oracle removed nothing: step 2 is the
    # same model on the same batch (cosines equal to the bit) ...
    assert (oracle[0]["pos_cos"], oracle[0]["neg_top1_cos"]) == (plain[0]["pos_cos"], plain[0]["neg_top1_cos"])
    # ... against 32 labelled keys now: fewer negatives, a strictly lower loss and a task no harder.
    assert oracle[0]["loss"] < plain[0]["loss"] and oracle[0]["acc_moco"] >= plain[0]["acc_moco"]
    # At step 4 the queue holds only real keys, which a random init cannot tell from the positive:
    # InfoNCE over 1 + K logits sits near chance, ln(K + 1).
    assert plain[1]["loss"] == pytest.approx(math.log(64 + 1), abs=0.3)
    # The oracle statistic is measured once every queue entry has a label: at init the hardest
    # negatives share the query's class about as often as any key, 1 in Fashion-MNIST's 10.
    assert "false_neg_share" not in oracle[0] and oracle[1]["false_neg_share"] == pytest.approx(0.1, abs=0.08)


def _cli(out, *extra):
    args = ["--preset=demo", *TINY, f"run.out={out}", "optim.epochs=3", "data.num_workers=1",
            "run.ckpt_every_steps=3", "eval.every=2", "eval.knn_train_size=256", "eval.heldout_size=128", *extra]
    return [sys.executable, "-m", "pretrain", *args]


def _final_state(out):
    state, path = checkpoint.load_latest(out / "checkpoints")
    return state


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    ref_out, out = tmp_path / "ref" / "run", tmp_path / "killed" / "run"
    subprocess.run(_cli(ref_out), check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(_cli(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    killed_after = None
    while time.monotonic() < deadline and proc.poll() is None:
        cands = checkpoint.candidates(out / "checkpoints")
        # Wait for a mid-epoch checkpoint inside the mixing phase (epoch 1: steps 9-16).
        if cands and int(cands[0].stem.split("-")[1]) >= 9:
            os.kill(proc.pid, signal.SIGKILL)
            killed_after = cands[0].name
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_after is not None, "the run ended before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()

    r = subprocess.run(_cli(out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stderr

    ref, got = _final_state(ref_out), _final_state(out)
    assert got["global_step"] == ref["global_step"] == 24
    assert ref["model"].keys() == got["model"].keys()
    for k in ref["model"]:
        assert torch.equal(ref["model"][k], got["model"][k]), k
    # One MLflow run, continued, with each training and each monitor point once in the JSON-lines file.
    assert (out / "mlflow_run_id").read_text() == got["mlflow_run_id"]
    records = read_metrics(out)
    assert [r["step"] for r in records if "loss" in r] == list(range(2, 25, 2))
    assert [r["step"] for r in records if "knn_top1" in r] == [16, 24]
    # MLflow holds each point once too: the replayed steps are not sent again.
    client = MlflowClient(f"sqlite:///{out.parent}/mlflow.db")
    assert [m.step for m in client.get_metric_history(got["mlflow_run_id"], "loss")] == list(range(2, 25, 2))
    assert sorted(m.step for m in client.get_metric_history(got["mlflow_run_id"], "knn_top1")) == [16, 24]
    # The monitor's numbers do not depend on the interruption either.
    ref_knn = [r["knn_top1"] for r in read_metrics(ref_out) if "knn_top1" in r]
    assert [r["knn_top1"] for r in records if "knn_top1" in r] == ref_knn


def test_a_checkpoint_whose_python_rng_state_is_a_string_is_refused_on_resume(tmp_path):
    """The format before stored repr(random.getstate()) and eval()'d it back; resuming from such a
    checkpoint is now a one-line user error, its string never evaluated."""
    out = tmp_path / "run"
    train(tiny_cfg(out, "run.max_steps=2"))
    state, path = checkpoint.load_latest(out / "checkpoints")
    state["rng"]["python"] = repr(random.getstate())
    checkpoint.save(out / "checkpoints", state["global_step"], state)
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: the checkpoint's python RNG state is not"):
        train(tiny_cfg(out, "run.max_steps=4"))


def _ddp_worker(rank, world, port, out, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model = train(tiny_cfg(out, "optim.epochs=1", "data.subset=512"))
    torch.save({"queue": model.queue, "ptr": model.queue_ptr, "q": model.encoder_q.state_dict()},
               result_dir / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_two_cpu_processes_keep_identical_queues(tmp_path):
    torch.manual_seed(0)
    mp.spawn(_ddp_worker, args=(2, free_port(), tmp_path / "run", tmp_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["queue"], r1["queue"]) and torch.equal(r0["ptr"], r1["ptr"])
    # 512 images / global batch 32 = 16 steps: every step enqueued the gathered global batch.
    assert int(r0["ptr"]) == (16 * 32) % 256
    for k in r0["q"]:
        if k.endswith(("weight", "bias")):
            assert torch.equal(r0["q"][k], r1["q"][k]), k


def test_compiled_training_matches_eager_and_keeps_checkpoint_keys(tmp_path):
    eager = train(tiny_cfg(tmp_path / "eager", "run.max_steps=2", "mochi.mix_start=0"))
    compiled = train(tiny_cfg(tmp_path / "compiled", "run.max_steps=2", "mochi.mix_start=0", "run.compile=true"))
    state = checkpoint.load_latest(tmp_path / "compiled" / "checkpoints")[0]
    assert not any("_orig_mod" in k for k in state["model"])
    assert state["model"].keys() == eager.state_dict().keys()
    for k, v in eager.state_dict().items():
        assert torch.allclose(v.float(), compiled.state_dict()[k].float(), atol=1e-4), k


def test_step_runs_bf16_autocast_and_channels_last_on_the_cpu_too():
    """run.amp and run.channels_last take the same code path on any device: no CUDA-only branch."""
    from pretrain.method.mixing import Mixing
    from pretrain.method.moco import MoCo
    from pretrain.train import memory_format, step

    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)

    def run(amp, channels_last):
        torch.manual_seed(0)
        fmt = memory_format(channels_last)
        model = MoCo("resnet18", dim=16, K=64, shuffle_bn_groups=2).to(memory_format=fmt)
        seen = []
        model.encoder_q.conv1.register_forward_hook(lambda m, i, o: seen.append((o.dtype, o.is_contiguous())))
        opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.1)
        losses = [step(model, opt, x.contiguous(memory_format=fmt), x.flip(-1).contiguous(memory_format=fmt),
                       Mixing(16, 8, 4), torch.Generator().manual_seed(1), amp=amp)[0].item() for _ in range(2)]
        return model, seen, losses

    ref, seen, ref_losses = run(False, False)
    assert seen[0] == (torch.float32, True)
    cl, seen, cl_losses = run(False, True)
    assert seen[0] == (torch.float32, False)  # channels_last activations, so not contiguous
    assert cl.encoder_q.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert cl_losses == pytest.approx(ref_losses, rel=1e-4)
    for a, b in zip(ref.encoder_q.parameters(), cl.encoder_q.parameters()):
        assert torch.allclose(a, b, atol=2e-3), (a - b).abs().max()
    amp, seen, amp_losses = run(True, True)
    assert seen[0][0] == torch.bfloat16  # autocast ran the convolutions in bf16 on the CPU
    assert amp_losses == pytest.approx(ref_losses, rel=0.05) and all(math.isfinite(v) for v in amp_losses)
    assert amp.queue.dtype == torch.float32  # the queue stays fp32 under autocast


def test_a_few_training_steps_with_amp_or_channels_last_on_the_cpu(tmp_path):
    """run.amp and run.channels_last reach training's step: beside fp32 contiguous from the same
    seed, channels_last trains the same losses and bf16 autocast close but not equal ones."""
    losses, models = {}, {}
    for name, extra in (("ref", []), ("amp", ["run.amp=true"]), ("cl", ["run.channels_last=true"])):
        models[name] = train(tiny_cfg(tmp_path / name, "run.max_steps=2", "run.log_every=1", "mochi.mix_start=0", *extra))
        losses[name] = [r["loss"] for r in read_metrics(tmp_path / name)]
    assert len(losses["ref"]) == 2 and all(math.isfinite(v) for v in losses["ref"])
    assert losses["cl"] == pytest.approx(losses["ref"], rel=1e-3)
    assert losses["amp"] == pytest.approx(losses["ref"], rel=0.05) and losses["amp"] != losses["ref"]
    assert {name: m.encoder_q.conv1.weight.is_contiguous(memory_format=torch.channels_last)
            for name, m in models.items()} == {"ref": False, "amp": False, "cl": True}


def test_a_setting_that_synthesises_nothing_is_mocov2_everywhere(tmp_path):
    """N = 32 with s = s' = 0: named, tagged and trained as MoCo v2 (one definition, Objective.is_plain_moco)."""
    out = tmp_path / "run"
    train(tiny_cfg(out, "run.max_steps=2", "mochi.mix_start=0", "mochi.s=0", "mochi.s_prime=0"))
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run((out / "mlflow_run_id").read_text())
    assert run.data.tags["method"] == "mocov2" and run.info.run_name.startswith("mocov2_resnet18")
    assert not any(k.startswith("syn_") for k in run.data.metrics)
    assert run.data.metrics["acc_all"] == run.data.metrics["acc_moco"]  # no synthetic column to compete


def test_hcl_with_mochi_and_the_oracle_trains_and_is_named_for_what_it_is(tmp_path):
    """Every loss composes with MoCHi (the synthetic points are among its negatives) and with the
    class oracle (removed negatives count for nothing); the run says which method it trained."""
    out = tmp_path / "run"
    train(tiny_cfg(out, "run.max_steps=6", "mochi.mix_start=0", "loss.method=hcl", "loss.tau_plus=0.1",
                   "loss.beta=1.0", "moco.oracle=true"))
    losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run((out / "mlflow_run_id").read_text())
    assert run.data.tags["method"] == "hcl+mochi" and run.info.run_name.startswith("hcl-b1-tp0.1_mochi-N32-s16-sp8_")
    assert run.data.params["loss.method"] == "hcl" and run.data.params["loss.beta"] == "1.0"
    assert run.data.metrics["syn_top10_share"] > 0  # the analyses apply to every method


def test_a_kill_between_the_final_checkpoint_and_the_summary_leaves_a_done_run(tmp_path):
    """The final checkpoint carries the summary: a run killed right after it is done, and the next
    start (or a grid's next look) writes summary.json and closes its MLflow run."""
    out = tmp_path / "run"
    cfg = tiny_cfg(out, "run.max_steps=4", f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
    train(cfg)
    summary = json.loads((out / "summary.json").read_text())
    run_id = (out / "mlflow_run_id").read_text()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    points = {k: len(client.get_metric_history(run_id, k)) for k in client.get_run(run_id).data.metrics}
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    # What a kill between the final checkpoint's manifest and summary.json leaves behind.
    (out / "summary.json").unlink()
    meta = json.loads((out / "tracking.json").read_text())
    (out / "tracking.json").write_text(json.dumps({**meta, "status": "RUNNING"}))
    client.update_run(run_id, status="RUNNING")

    assert rundir.pretrain_done(out)
    assert checkpoint.final_summary(out / "checkpoints") == summary
    train(cfg)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert client.get_run(run_id).info.status == "FINISHED"
    assert {k: len(client.get_metric_history(run_id, k)) for k in points} == points
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ckpts
    # A run that is not complete is not done: its newest checkpoint carries no summary.
    short = tmp_path / "short"
    train(tiny_cfg(short, "run.max_steps=2", "run.ckpt_every_steps=1"))
    assert rundir.pretrain_done(short)
    cfg_longer = tiny_cfg(short, "run.max_steps=2", "run.ckpt_every_steps=1")
    assert checkpoint.final_summary(short / "checkpoints")["global_step"] == cfg_longer.run.max_steps
    checkpoint.save(short / "checkpoints", 3, {"x": torch.zeros(1)})  # a later, non-final checkpoint
    (short / "summary.json").unlink()
    assert not rundir.pretrain_done(short)


# Kills a run inside its n-th MLflow log_batch call that carries metrics, before or after the store
# has the points, then runs `python -m pretrain` with the given arguments.
KILL_IN_LOG = """
import os, runpy, signal, sys
from mlflow.tracking import MlflowClient
n, when = int(os.environ["KILL_AT_BATCH"]), os.environ["KILL_WHEN"]
real, calls = MlflowClient.log_batch, [0]
def log_batch(self, run_id, metrics=(), *a, **kw):
    if metrics:
        calls[0] += 1
        if calls[0] == n and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
    out = real(self, run_id, metrics, *a, **kw)
    if metrics and calls[0] == n and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return out
MlflowClient.log_batch = log_batch
sys.argv = ["pretrain", *sys.argv[1:]]
runpy.run_module("pretrain", run_name="__main__", alter_sys=True)
"""


def test_sigkill_at_random_moments_leaves_every_point_in_mlflow_once(tmp_path):
    """Ten kills: at random moments (start-up, a step, a checkpoint, a log call) and inside the
    logging call itself, before and after the store took the points; two loader workers. Every
    (metric, step) of the finished run is in the store exactly once, and in metrics.jsonl once.
    Kills are placed by the run's progress, not by the clock, so that a fast machine does not
    finish the run before they land."""
    import random

    out = tmp_path / "run"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["--preset=demo", *TINY, f"run.out={out}", "optim.epochs=6", "data.num_workers=2", "run.log_every=1",
            "run.ckpt_every_steps=2", f"run.tracking_uri={uri}"]
    script = tmp_path / "kill_in_log.py"
    script.write_text(KILL_IN_LOG)
    rng = random.Random(17)

    def logged() -> int:
        return len(read_metrics(out)) if (out / rundir.METRICS_FILE).is_file() else 0

    kills = 0
    for i in range(10):
        if i % 2:  # inside the n-th logging call of this start
            env = {**os.environ, "KILL_AT_BATCH": str(rng.randint(1, 3)), "KILL_WHEN": rng.choice(["before", "after"])}
            r = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, timeout=300)
            kills += r.returncode == -signal.SIGKILL
            continue
        # at a random moment of start-up, or 0-0.3 s after the run got 1-2 steps further
        ahead, target = rng.randint(0, 2), logged()
        target += ahead
        proc = subprocess.Popen([sys.executable, "-m", "pretrain", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if ahead == 0:
            time.sleep(rng.uniform(0.5, 3.0))
        else:
            deadline = time.monotonic() + 240
            while proc.poll() is None and logged() < target and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
    assert kills >= 8 and not (out / "summary.json").exists()
    r = subprocess.run([sys.executable, "-m", "pretrain", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    records = read_metrics(out)
    run_id = (out / "mlflow_run_id").read_text()
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [r["step"] for r in records] == list(range(1, 49))
    for key in run.data.metrics:
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == [r["step"] for r in records if key in r], key
    assert len(client.search_runs([run.info.experiment_id])) == 1


def snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_whose_checkpoints_are_all_cut_is_refused_untouched(tmp_path):
    """A disk that filled up, a copy cut short: a finished run is never trained again unasked."""
    out = tmp_path / "run"
    cfg = tiny_cfg(out, "run.max_steps=4", f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
    train(cfg)
    for ckpt in (out / "checkpoints").glob("*.pt"):
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    before = snapshot(out)
    r = subprocess.run([sys.executable, "-m", "pretrain", "--preset=demo", *TINY, "run.max_steps=4", f"run.out={out}",
                        f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db"], capture_output=True, text=True,
                       timeout=300)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "holds a finished run" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert snapshot(out) == before


def test_a_cut_last_checkpoint_is_kept_aside_when_its_step_is_saved_again(tmp_path):
    """The run resumes from the newest checkpoint that reads back; the damaged one is moved to
    checkpoints/damaged/ rather than overwritten when its step is saved again."""
    out = tmp_path / "run"
    cfg = tiny_cfg(out, "run.max_steps=6", "run.ckpt_every_steps=2", "run.keep_checkpoints=3",
                   f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
    train(cfg)
    (out / "summary.json").unlink()  # as if killed before the run was done: only its checkpoints count
    last = sorted((out / "checkpoints").glob("*.pt"))[-1]
    damaged = last.read_bytes()[:2000]
    last.write_bytes(damaged)
    train(cfg)
    assert (out / "checkpoints" / "damaged" / last.name).read_bytes() == damaged
    assert checkpoint.verify(last) is not None and (out / "summary.json").is_file()


def test_every_synthetic_kind_trains_inside_its_window_only(tmp_path):
    """All seven kinds in one run, synthesising in epoch 1 only (mix_start 1, mix_stop 2 of 3): each
    kind's cosine is logged on the window's steps and nowhere else, the run is tagged for what it
    trains, and SynCo's extrapolation shows easier than the hard sets it comes from."""
    out = tmp_path / "run"
    counts = [f"mochi.{k}=4" for k in ("s", "s_prime", "s_noise", "s_extrap", "s_grad", "s_adv", "s_reweight")]
    train(tiny_cfg(out, "data.subset=128", "optim.epochs=3", "run.log_every=1", "mochi.mix_start=1",
                   "mochi.mix_stop=2", *counts))
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert len(rows) == 12 and all(math.isfinite(r["loss"]) for r in rows)
    kinds = ("syn_s_cos", "syn_sprime_cos", "syn_noise_cos", "syn_extrap_cos", "syn_grad_cos", "syn_adv_cos",
             "syn_reweight_cos")
    window = [r for r in rows if all(k in r for k in kinds)]
    assert [r["epoch"] for r in window] == [1] * 4
    assert not any(k in r for r in rows if r["epoch"] != 1 for k in (*kinds, "hard_cos"))
    assert all(r["syn_extrap_cos"] < r["hard_cos"] for r in window)
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run((out / "mlflow_run_id").read_text())
    assert run.data.tags["method"] == "synthetic"
    assert run.info.run_name.startswith("mochi-N32-s4-sp4-sn4-sx4-sg4-sa4-sr4_resnet18")
