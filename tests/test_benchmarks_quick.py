"""Each benchmark's --quick mode (generated data, micro/tiny backbones) runs to the end and writes well-formed JSON.

These keep the scripts working between the (hours-long) full runs; they check structure, never a figure. Each runs
in a subprocess on one torch thread, as a user would start it, with its output in a temporary folder.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app_fixtures import wait_for


ROOT = Path(__file__).resolve().parents[1]


def run_quick(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """The script in its own process group: past `timeout` the group is killed, so a server or worker it started
    does not outlive it (a plain subprocess.run would kill the script alone)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{script} --quick ran past {timeout} s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert result.returncode == 0, f"{script} --quick failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def load(path: Path) -> dict:
    assert path.is_file(), f"{path} was not written"
    return json.loads(path.read_text())  # NaN is allowed (e.g. presence AUC without a classifier)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_label_efficiency_quick(tmp_path):
    run_quick("label_efficiency.py", "--out", str(tmp_path))
    data = load(tmp_path / "label_efficiency.json")
    assert set(data) >= {"config", "pretrained", "runs", "ablations", "table"}
    assert set(data["runs"]) == {"supervised", "mean teacher", "U-Net (MONAI, from scratch)", "ADA-SAM tags all",
                                 "ADA-SAM tags masked"}
    for by_fraction in data["runs"].values():
        assert set(by_fraction) == {"0.5", "1"}
        for rows in by_fraction.values():
            assert len(rows) == 1
            assert all(is_number(rows[0][k]) for k in ("dice_lesion", "dice_all", "presence_auc", "hd95_lesion"))
            assert 0 <= rows[0]["dice_all"] <= 1
    assert len(data["ablations"]) == 6 and all(set(v) == {"0.5"} for v in data["ablations"].values())
    assert is_number(data["pretrained"]["dice_lesion"]) and data["failures"] == []
    assert "| supervised |" in data["table"] and (tmp_path / "label_efficiency.md").is_file()
    assert (tmp_path / "label_efficiency.png").is_file()
    shutil.rmtree(tmp_path / "runs" / "u_net__monai__from_scratch_1_seed0")
    result = run_quick("label_efficiency.py", "--out", str(tmp_path), "--methods", "unet")  # one method again
    assert "# U-Net masks 1 seed 0" in result.stdout and "adasam train" not in result.stdout  # only it trains
    again = load(tmp_path / "label_efficiency.json")
    assert again["config"]["methods"] == ["unet"]
    for label, by_fraction in data["runs"].items():  # the other methods' finished runs are read back, not dropped
        if label != "U-Net (MONAI, from scratch)":
            assert again["runs"][label] == by_fraction
    assert again["ablations"] == data["ablations"]
    for name in ("no_unlabeled_images____no_unlabeled", "no_gradient_feedback____freeze_adapter"):
        shutil.rmtree(tmp_path / "runs" / f"{name}_0.5_seed0")
    result = run_quick("label_efficiency.py", "--out", str(tmp_path), "--methods", "adasam",
                       "--ablations", "no-unlabeled")  # one ablation again
    trained = [line for line in result.stdout.splitlines() if line.startswith("$ adasam train")]
    assert len(trained) == 1 and "--no-unlabeled" in trained[0]
    third = load(tmp_path / "label_efficiency.json")
    assert "no gradient feedback (--freeze-adapter)" not in {k for k, v in third["ablations"].items() if v}
    assert set(third["ablations"]["no unlabeled images (--no-unlabeled)"]) == {"0.5"}
    assert third["runs"]["ADA-SAM tags all"] == data["runs"]["ADA-SAM tags all"]
    shutil.rmtree(tmp_path / "runs" / "ada_sam_tags_all_1_seed0")
    unet_done = tmp_path / "runs" / "u_net__monai__from_scratch_1_seed0" / "eval_auto.json"
    before = unet_done.stat().st_mtime_ns
    result = run_quick("label_efficiency.py", "--out", str(tmp_path), "--methods", "--ablations")  # collect only
    assert "adasam train" not in result.stdout and unet_done.stat().st_mtime_ns == before
    collected = load(tmp_path / "label_efficiency.json")
    assert collected["runs"]["ADA-SAM tags all"] == {"0.5": data["runs"]["ADA-SAM tags all"]["0.5"]}
    assert collected["runs"]["supervised"] == data["runs"]["supervised"]


def test_active_learning_quick(tmp_path):
    run_quick("active_learning.py", "--out", str(tmp_path), "--jobs", "2")  # curves in parallel processes
    data = load(tmp_path / "active_learning.json")
    assert set(data) >= {"config", "strategies", "reference", "summary", "table"} and data["failures"] == []
    assert set(data["strategies"]) == {"classifier", "segmentation", "combined", "coreset", "typiclust", "random"}
    for runs in data["strategies"].values():
        curve = runs[0]["curve"]
        assert curve and [p["labels"] for p in curve] == sorted(p["labels"] for p in curve)
        assert all(is_number(p["dice_lesion"]) and 0 < p["fraction"] <= 0.3 + 1e-9 for p in curve)
        assert all(p["round_s"] > 0 and 1 <= p["best_step"] <= data["config"]["steps"] for p in curve)
        assert all(is_number(p["serving_val_dice"]) for p in curve)
        assert all(isinstance(p["image_view"], bool) for p in curve)
        for p in curve:  # a held-back round leaves the previous model serving, and has its own test figure too
            assert p["published"] == (p["serving_val_dice"] == pytest.approx(p["val_dice"]))
            assert p["published"] or is_number(p["held_back_dice_lesion"])
    assert data["config"]["image_view"] is True  # as `adasam serve` trains rounds by default
    assert any(p["image_view"] for runs in data["strategies"].values() for p in runs[0]["curve"])
    assert data["config"]["threads"] == max(1, (os.cpu_count() or 1) // 2)  # cores shared by the 2 jobs
    assert data["reference"][0]["curve"] and data["reference"][0]["strategy"] == "full"
    for strategy in data["strategies"]:
        summary = data["summary"][strategy]
        assert is_number(summary["auc_mean"]) and is_number(summary["val_auc_mean"])
        assert "labels_to_95_per_seed" in summary
    check = data["projection_check"]  # fitted up to 10% of the pool: the quick run has no round that early
    assert check["fit_upto"] == 0.1 and set(check["strategies"]) == set(data["strategies"])
    assert "Dashboard projection check" in data["table"]
    assert not (tmp_path / "workspaces" / "random_seed0").exists()  # removed unless --keep-workspaces
    firsts = [runs[0]["curve"][0] for runs in data["strategies"].values()]  # the seed's first round, trained once
    assert all(first == firsts[0] for first in firsts) and not (tmp_path / "workspaces" / "stem_seed0").exists()
    assert load(tmp_path / "runs" / "stem_seed0.json")["curve"] == [firsts[0]]
    assert (tmp_path / "active_learning.png").is_file()


def test_speed_quick(tmp_path):
    out = tmp_path / "speed.json"
    run_quick("speed.py", "--json", str(out))
    data = load(out)
    assert set(data) >= {"config", "matmul", "encoder", "decoder", "train_step", "retrain_round", "summary"}
    assert data["matmul"]["gflops"] > 0 and data["encoder"]["s_per_image"] > 0
    from model.openvino_runtime import cpu_has_bf16

    assert (data["matmul"]["gflops_bf16"] is not None) == cpu_has_bf16()  # measured wherever the CPU has bf16
    if cpu_has_bf16():
        assert data["encoder"]["s_per_image_openvino_bf16"] > 0 and data["encoder"]["bf16_relative_error"] >= 0
        assert "openvino bf16" in data["summary"]
    assert data["decoder"]["predict_ms"] > 0 and data["decoder"]["refine_ms"] > 0
    assert data["train_step"]["step_s"] > 0 and data["train_step"]["batch"]["masked_through_decoder"] > 0
    rr = data["retrain_round"]
    assert rr["round_s"] > 0 and rr["rescore_images"] > 0 and rr["rescore_images_per_s"] > 0
    for section in ("matmul", "encoder", "decoder", "train_step", "retrain_round"):
        assert data[section]["peak_rss_mb"] > 0


def test_model_quality_quick():
    """model_quality --quick picks its own scratch folder; its path is read from the commands it prints."""
    result = run_quick("model_quality.py", "--runs", "supervised@0.1", "adasam@0.1")  # adasam@1.0: same path
    found = re.search(r"--json (\S+)/pretrained/eval_auto\.json", result.stdout)
    assert found, result.stdout[-2000:]
    out = Path(found.group(1))
    try:
        data = load(out / "results.json")
        assert set(data) >= {"data", "seeds", "runs", "table"}
        assert {"pretrained whole-image box", "supervised masks 0.1", "adasam masks 0.1"} == set(data["runs"]) - {
            "pretrained ground-truth box (oracle)"}
        assert all(is_number(r["dice_all"]) for runs in data["runs"].values() for r in runs)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def test_ui_latency_quick(tmp_path):
    out = tmp_path / "ui.json"
    run_quick("ui_latency.py", "--json", str(out))
    data = load(out)
    assert data["accept_to_next_ms"]["n"] == 10  # every timed accept of --quick, none lost
    for key in ("accept_to_next_ms", "click_to_mask_ms"):
        figures = data[key]
        assert figures["n"] >= 1 and 0 < figures["min"] <= figures["median"] <= figures["p90"] <= figures["max"]


def test_load_quick_with_a_kill(tmp_path):
    """3 annotators for 20 s with one SIGKILL of the server: the run's own checks (every acknowledged save is a row
    with the mask sent or shown, no image held by two annotators, integrity_check) decide its exit status."""
    run_quick("load.py", "--kill-every", "8", "--json", str(tmp_path / "load.json"))
    data = load(tmp_path / "load.json")
    assert data["kills"] >= 1 and data["identities"] == 3 and data["acknowledged_saves"] > 0
    assert data["acknowledged_missing"] == 0 and data["acknowledged_with_other_mask"] == 0
    assert data["integrity_check"] == "ok" and data["overlapping_holds"] == 0
    assert set(data["actions"]) >= {"task", "accept"}


def test_effort_quick(tmp_path):
    run_quick("effort.py", "--json", str(tmp_path / "effort.json"))
    data = load(tmp_path / "effort.json")
    assert set(data["starts"]) == {"proposal", "box", "clicks"}
    for start in data["starts"].values():
        summary = start["summary"]
        assert summary["lesion_images"] > 0 and 0 <= summary["noc90_mean"] <= 10
        rows = [r for r in start["images"] if r["lesion"]]
        assert all(len(r["dices"]) >= 1 and all(0 <= d <= 1 for d in r["dices"]) for r in rows)
        assert all(r["noc90"] == 10 or max(r["dices"]) >= 0.9 for r in rows)


def test_distributed_quick(tmp_path):
    run_quick("distributed.py", "--json", str(tmp_path / "distributed.json"))
    data = load(tmp_path / "distributed.json")
    assert [run["ranks"] for run in data["runs"]] == [1, 2]
    for run in data["runs"]:
        assert run["embed_images"] == 8 and run["embed_images_per_s"] > 0 and len(run["train_walls_s"]) == 2
        assert is_number(run["train_step_s"]) and is_number(run["embed_speedup"])


def test_remote_trainer_quick(tmp_path):
    run_quick("remote_trainer.py", "--json", str(tmp_path / "remote_trainer.json"))
    data = load(tmp_path / "remote_trainer.json")
    cold, warm = data["remote_round_cold_mirror"], data["remote_round_warm_mirror"]
    assert cold["calls"]["image"]["calls"] == data["config"]["images"]  # a small pool: every image in the plan
    assert "image" not in warm["calls"]  # ... and in the mirror for the next round
    assert "model" not in cold["calls"] and warm["calls"]["model"]["calls"] == 1  # round 2 starts from round 1's
    for run in (data["local_round"], cold, warm):
        assert is_number(run["round_s"]) and is_number(run["train_s"]) and is_number(run["val_dice"])


def test_round_cost_quick(tmp_path):
    run_quick("round_cost.py", "--json", str(tmp_path / "round_cost.json"), "--image-view")
    first, second = load(tmp_path / "round_cost.json")["rounds"]
    assert first["phases"]["train_steps"]["calls"] == second["phases"]["train_steps"]["calls"] == 4
    assert first["image_view"]["stopped_at"] == 6  # fresh; then warm if round 1 kept its view, else fresh again
    assert second["image_view"]["stopped_at"] == (4 if first["image_view_check"]["kept"] else 6)
    assert first["phases"]["publish_check"]["calls"] == 1  # nothing serves yet: only the new model is scored
    # the validation set is unchanged since round 1: the serving model's figure from then is reused, not re-measured
    assert second["phases"]["publish_check"]["calls"] == 1 and second["labels"] == first["labels"] + 2
    for run in (first, second):
        assert run["phases"]["rescore"]["calls"] == 1 and is_number(run["val_dice"])
        assert run["view_self_training"] is None  # not in the app's rounds
        assert run["phases"]["image_view_check"]["calls"] == 1 and "kept" in run["image_view_check"]
        assert 0 <= run["other_s"] < run["total_s"]


def test_first_round_quick(tmp_path):
    run_quick("first_round.py", "--json", str(tmp_path / "first_round.json"))
    runs = load(tmp_path / "first_round.json")["runs"]
    assert [run["labels"] for run in runs] == [3, 6]
    for run in runs:
        assert run["masks"] + run["no_finding"] == run["labels"] and is_number(run["val_dice"])


def test_the_serving_val_figure_is_rebuilt_by_the_publish_rule():
    import importlib.util

    spec = importlib.util.spec_from_file_location("active_learning", ROOT / "benchmarks" / "active_learning.py")
    active_learning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(active_learning)
    points = [{"val_dice": v} for v in (0.50, 0.60, 0.55, 0.57, None, 0.30)]
    points[3]["serving_val_dice"] = 0.6  # recorded: wins over the rule
    rebuilt = active_learning.serving_val(points)
    assert rebuilt[:4] == [0.50, 0.60, 0.60, 0.6]  # 0.55 is more than 0.02 below 0.60: held back
    assert math.isnan(rebuilt[4])  # no val figure: published unmeasured
    assert rebuilt[5] == 0.30  # after an unmeasured model, the next one publishes


def test_a_finished_run_is_tabled_only_if_trained_as_asked(tmp_path, monkeypatch):
    """label_efficiency.py skipped training whenever a run folder held a summary: a 100-step run on another
    backbone was tabled as a default one. Now its recorded settings (or, for older runs, its summary's backbone and
    step cap) must match; a run trained as asked still reads back."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("label_efficiency", ROOT / "benchmarks" / "label_efficiency.py")
    label_efficiency = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "label_efficiency", label_efficiency)  # its dataclasses look their module up
    spec.loader.exec_module(label_efficiency)
    asked = {"backbone": "litemedsam", "steps": None, "extra": ["--method", "adasam"]}
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    (recorded / "benchmark_settings.json").write_text(json.dumps(asked))
    label_efficiency.check_settings(recorded, asked)
    with pytest.raises(ValueError, match="other settings.*steps"):
        label_efficiency.check_settings(recorded, {**asked, "steps": 100})
    older = tmp_path / "older"  # no recorded settings: the summary's backbone and step cap decide
    older.mkdir()
    (older / "summary.json").write_text(json.dumps({"backbone": "micro_random", "train_config": {"steps": 100}}))
    with pytest.raises(ValueError, match="backbone"):
        label_efficiency.check_settings(older, asked)
    with pytest.raises(ValueError, match="steps"):
        label_efficiency.check_settings(older, {**asked, "backbone": "micro_random"})
    label_efficiency.check_settings(older, {**asked, "backbone": "micro_random", "steps": 100})


def test_the_projection_check_reads_published_rounds_as_the_dashboard_does():
    """A round the publish check held back is neither fitted nor scored: its val Dice is of a model nobody served,
    and its row's mask count is the serving model's (the audit found random seed 1's 99-label round paired so)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("active_learning", ROOT / "benchmarks" / "active_learning.py")
    active_learning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(active_learning)

    def curve(held_back_dice):
        rows = [{"fraction": f, "masks": m, "val_dice": 0.9 - 0.5 * m ** -0.5, "published": True}
                for f, m in [(0.02, 10), (0.04, 20), (0.06, 30), (0.08, 40), (0.10, 50), (0.12, 60)]]
        rows.insert(5, {"fraction": 0.10, "masks": 40, "val_dice": held_back_dice, "published": False})
        return {"strategies": {"random": [{"seed": 0, "curve": rows}]}}

    checks = [active_learning.projection_check(curve(d), 0.08)["strategies"]["random"] for d in (0.1, 0.95)]
    assert checks[0] == checks[1]  # the held-back round's figure changes nothing
    assert [p["fraction"] for p in checks[0]["pairs"]] == [0.10, 0.12]
    assert checks[0]["mean_abs_error"] < 0.01  # the fit to an exact power law predicts the later published rounds


def test_a_finished_curve_is_read_back_only_with_its_settings_and_rounds_stay_on_the_grid(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("active_learning", ROOT / "benchmarks" / "active_learning.py")
    active_learning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(active_learning)
    config = {"step": 22, "start": 11, "stop": 165, "steps": None, "image_view": True, "cold_start": "random",
              "backbone": "litemedsam"}
    path = tmp_path / "random_seed0.json"
    path.write_text(json.dumps({"config": config, "curve": [{"labels": 11}]}))
    assert active_learning.finished_curve(path, config)["curve"] == [{"labels": 11}]
    with pytest.raises(ValueError, match="other settings.*steps"):
        active_learning.finished_curve(path, {**config, "steps": 30})
    path.write_text(json.dumps({"curve": []}))  # from before settings were recorded: read as it is
    assert active_learning.finished_curve(path, config) == {"curve": []}
    # a curve resumed in the middle of annotating finishes the step: rounds at 11, 33, 55 ... as the others
    assert [active_learning.on_grid(n, 11, 22, 165) for n in (0, 11, 12, 33, 40, 55, 160)] == [11, 11, 33, 33, 55,
                                                                                                55, 165]


def test_a_cut_active_learning_curve_resumes_where_it_stopped(tmp_path, monkeypatch):
    """A curve killed in its second round goes on from its workspace: the first round's row is kept, not retrained,
    and the run still ends with a row per round up to the stop fraction."""
    import argparse
    import importlib.util

    from annotation import Store
    from model.dataset import SPLIT_SEED, load_data_folder
    from model.testing import write_blob_dataset

    spec = importlib.util.spec_from_file_location("active_learning", ROOT / "benchmarks" / "active_learning.py")
    active_learning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(active_learning)
    folder = load_data_folder(write_blob_dataset(tmp_path / "data", n=30, negatives=6), seed=SPLIT_SEED)
    out = tmp_path / "out"
    source = active_learning.stage_source(folder, out)
    args = argparse.Namespace(threads=1, quick=True, step=0.1, start=0.1, stop=0.3, steps=3, image_view=False,
                              cold_start="shuffle", backbone="micro_random", cache=str(tmp_path / "cache"),
                              reference_rounds=3, keep_workspaces=True)
    trained = []
    original = active_learning.trainer_module.BackgroundTrainer._train

    def killed_in_round_two(self, round_id, registering):
        trained.append(round_id)
        if len(trained) == 2:
            raise KeyboardInterrupt  # as a kill: the round stays "running", nothing after it runs
        return original(self, round_id, registering)

    monkeypatch.setattr(active_learning.trainer_module.BackgroundTrainer, "_train", killed_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        active_learning.simulate(args, folder, source, "random", 0, out)
    partial = json.loads((out / "runs" / "random_seed0.partial.json").read_text())
    assert len(partial["curve"]) == 1

    monkeypatch.setattr(active_learning.trainer_module.BackgroundTrainer, "_train", original)
    result = active_learning.simulate(args, folder, source, "random", 0, out)
    curve = result["curve"]
    assert curve[0] == partial["curve"][0]  # kept, not trained again
    labels = [p["labels"] for p in curve]
    assert len(curve) == 3 and labels == sorted(set(labels))
    assert labels[-1] == round(0.3 * len(folder.split("pool")))
    assert all(p["round_s"] > 0 for p in curve)
    with Store(out / "workspaces" / "random_seed0", create=False) as store:
        statuses = [r.status for r in store.rounds()]
    assert statuses == ["done", "cancelled", "done", "done"]  # the killed round is closed, then trained anew
    assert not (out / "runs" / "random_seed0.partial.json").exists()

    cut = out / "runs" / "random_seed0.partial.json"  # only a run with the same settings resumes
    cut.write_text(json.dumps(partial))
    workspace = out / "workspaces" / "random_seed0"
    assert active_learning.resumable_curve(cut, workspace, partial["config"]) == partial["curve"]
    assert active_learning.resumable_curve(cut, workspace, {**partial["config"], "steps": 4}) is None


def test_active_learning_workers_die_with_the_benchmark(tmp_path):
    """A benchmark killed by its pid alone (not Ctrl-C, which reaches the whole group) takes its curve workers with
    it: left running, they trained the same workspaces as a rerun's workers."""
    parent = tmp_path / "parent.py"
    parent.write_text(f"""
import concurrent.futures, multiprocessing, os, sys, time
sys.path.insert(0, {str(ROOT / "benchmarks")!r})  # spawned workers get this path too, to unpickle end_with
import active_learning
if __name__ == "__main__":
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=active_learning.end_with, initargs=(os.getpid(),)) as pool:
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 600)
        time.sleep(600)
""")
    process = subprocess.Popen([sys.executable, str(parent)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    worker = int(process.stdout.readline())

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # a zombie is dead
        except FileNotFoundError:
            return False

    assert alive(worker)
    process.kill()
    process.wait()
    wait_for(lambda: not alive(worker), timeout=10, interval=0.1, what="the worker to die with the benchmark")
