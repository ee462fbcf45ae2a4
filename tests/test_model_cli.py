"""`adasam train / evaluate / predict` end to end on generated blobs (tiny_random backbone), and bad input."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import main
from model.dataset import seeded_split
from model.train import written_val_dice
from model_fixtures import one_torch_thread, write_blob_dataset, write_blob_folder  # noqa: F401 (autouse)

ROOT = Path(__file__).resolve().parents[1]
IDS = [f"img_{k:03d}" for k in range(10)]
SPLIT = seeded_split(IDS, 0)  # what train and evaluate generate for a folder without manifest.csv
ABSENT = {min(i for i in IDS if SPLIT[i] == "pool"), min(i for i in IDS if SPLIT[i] == "test")}


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """10 blob images without a manifest: a generated 7/1/2 split, one blob-free image in pool and one in test."""
    return write_blob_folder(tmp_path_factory.mktemp("data") / "blobs", [i not in ABSENT for i in IDS])


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory, data, cache) -> dict:
    folder = tmp_path_factory.mktemp("runs") / "run"
    code, out, err = run_cli("train", "--data", data, "--out", folder, "--backbone", "tiny_random", "--steps", 4,
                             "--cache", cache, "--masks", 0.5, "--seed", 0)
    assert code == 0, err
    return {"folder": folder, "stdout": out, "stderr": err}


def test_train_writes_a_run(run):
    folder = run["folder"]
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "model.pt", "split.csv", "summary.json"]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_pool"] == 7 and summary["n_val"] == 1 and summary["n_masked"] == 4
    assert summary["embeddings_computed"] == 8  # pool + val; the test split is never touched
    assert summary["resumed_from_step"] is None
    assert summary["train_config"]["steps"] == 4 and summary["model_config"]["backbone"] == "tiny_random"
    assert summary["model_config"]["has_negatives"] is True
    saved = torch.load(folder / "model.pt", weights_only=False)
    assert summary["model_config"] == saved["config"] and saved["config"]["presence_head"]  # the model as saved
    assert summary["best"]["presence_head"] == saved["presence_head"]
    assert summary["best"]["step"] == 4  # evaluated at the last step, though off the 50-step schedule
    assert "generated (seed 0)" in run["stdout"] and "wrote" in run["stdout"]
    written = written_val_dice(summary["best"])  # the model as written, after the phases that follow the steps
    assert written is not None and f"(val lesion Dice before gating {written:.3f})" in run["stdout"]
    assert "error" not in run["stderr"].lower() and "Traceback" not in run["stderr"]


def test_train_keeps_the_val_best_checkpoint(data, cache, tmp_path, monkeypatch):
    """With an evaluation every step and val scores scripted so the best is step 2 of 4, the run's model.pt, its
    summary and its report all name step 2, and model.pt holds other weights than the last step's. (A given
    --cam-threshold skips the calibration, which is not under test here.)"""
    from model.train import TrainConfig, Trainer

    @dataclass
    class EveryStep(TrainConfig):
        eval_every: int = 1

    scores = {1: 0.2, 2: 0.9, 3: 0.1, 4: 0.3}
    monkeypatch.setattr("model.train.TrainConfig", EveryStep)
    monkeypatch.setattr(Trainer, "val_score", lambda self, summary: scores[self.step])
    folder = tmp_path / "run"
    code, out, err = run_cli("train", "--data", data, "--out", folder, "--backbone", "tiny_random", "--steps", 4,
                             "--cache", cache, "--masks", 0.5, "--seed", 0, "--cam-threshold", 0.4)
    assert code == 0, err
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["train_config"]["eval_every"] == 1
    assert summary["best"]["step"] == 2 and summary["best"]["score"] == 0.9
    assert "best val step 2 (score 0.900)" in out
    best, last = (torch.load(folder / name, weights_only=False) for name in ("model.pt", "last.pt"))
    assert best["step"] == 2 and last["step"] == 4 and [r["step"] for r in last["history"]] == [1, 2, 3, 4]
    assert any(not torch.equal(v, last["state"][k]) for k, v in best["state"].items())


def test_generated_split_is_written_to_the_run(run):
    with (run["folder"] / "split.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["id"]: r["split"] for r in rows} == SPLIT
    assert all(r["has_lesion"] == "" for r in rows)  # no manifest: tags come from the masks, not from the split file


def test_second_train_resumes_from_the_cache(run, data, cache):
    code, out, err = run_cli("train", "--data", data, "--out", run["folder"], "--backbone", "tiny_random",
                             "--steps", 4, "--cache", cache, "--masks", 0.5, "--seed", 0)
    assert code == 0, err
    assert "resuming" in out and "from step 4" in out
    summary = json.loads((run["folder"] / "summary.json").read_text())
    assert summary["embeddings_computed"] == 0
    assert summary["resumed_from_step"] == 4  # so its train_seconds read as this part's, not the run's


@pytest.fixture(scope="module")
def evaluated(run, data, cache, tmp_path_factory) -> dict:
    results = {}
    for prompt in ("auto", "oracle"):
        path = tmp_path_factory.mktemp("eval") / f"{prompt}.json"
        code, out, err = run_cli("evaluate", "--data", data, "--model", run["folder"], "--split", "test",
                                 "--json", path, "--cache", cache, "--prompt", prompt)
        assert code == 0, err
        results[prompt] = {"json": json.loads(path.read_text()), "stdout": out}
    return results


def test_evaluate_json(evaluated):
    result = evaluated["auto"]["json"]
    for key in ("n_images", "n_lesion", "dice_lesion", "dice_all", "presence_auc", "hd95_lesion", "prompt"):
        assert key in result, key
    assert result["n_images"] == 2 and result["n_lesion"] == 1
    assert result["prompt"] == "auto" and result["split"] == "test"
    assert 0 <= result["dice_lesion"] <= 1 and 0 <= result["dice_all"] <= 1
    assert 0 <= result["presence_auc"] <= 1  # both classes are in the test split
    assert isinstance(result["hd95_lesion"], float)
    assert sorted(r["id"] for r in result["images"]) == sorted(i for i in IDS if SPLIT[i] == "test")
    table = evaluated["auto"]["stdout"]
    for key in ("n_images", "dice_lesion", "dice_all", "presence_auc", "hd95_lesion", "prompt"):
        assert key in table


def test_oracle_prompt_is_labelled_an_upper_bound(evaluated):
    oracle = evaluated["oracle"]["json"]
    assert "upper bound" in oracle["prompt"] and "upper bound" in evaluated["oracle"]["stdout"]
    assert oracle["n_images"] == 2 and oracle["prompt_box_iou_lesion"] > 0.9
    assert evaluated["auto"]["json"]["prompt"] == "auto"


def test_predict_writes_masks_and_overlays(run, data, cache, tmp_path):
    images = [data / "images" / f"{i}.png" for i in IDS[:2]]
    out = tmp_path / "pred"
    (tmp_path / "pred.partial").mkdir()  # a folder of the user's that merely has the name a temporary could have
    (tmp_path / "pred.partial" / "keep.txt").write_text("mine")
    code, stdout, err = run_cli("predict", "--model", run["folder"], *images, "--out", out, "--cache", cache)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred", "pred.partial"]  # no temporary left behind
    assert (tmp_path / "pred.partial" / "keep.txt").read_text() == "mine"  # and the user's folder untouched
    rows = json.loads((out / "predictions.json").read_text())
    assert len(rows) == 2
    for path, row in zip(images, rows):
        original = np.asarray(Image.open(path))
        mask = np.asarray(Image.open(out / f"{path.stem}_mask.png"))
        overlay = np.asarray(Image.open(out / f"{path.stem}_cam.png"))
        assert mask.shape == original.shape and set(np.unique(mask)) <= {0, 255}
        assert overlay.shape == (*original.shape, 3)
        assert 0 <= row["probability"] <= 1 and row["mask_pixels"] == int((mask > 0).sum())
        assert all(0 <= v <= 1 for v in row["uncertainty"].values())


def test_predict_keeps_images_of_one_name_apart_and_refuses_a_folder_in_use(run, data, cache, tmp_path):
    image = data / "images" / f"{IDS[0]}.png"
    twin = tmp_path / "elsewhere" / image.name  # the same file name in another folder
    twin.parent.mkdir()
    twin.write_bytes(image.read_bytes())
    out = tmp_path / "pred"
    code, _, err = run_cli("predict", "--model", run["folder"], image, twin, "--out", out, "--cache", cache)
    assert code == 0, err
    rows = json.loads((out / "predictions.json").read_text())
    assert [r["mask"] for r in rows] == [f"{image.stem}_mask.png", f"{image.stem}_2_mask.png"]
    listed = {name for r in rows for name in (r["mask"], r["cam"])} | {"predictions.json"}
    assert listed == {p.name for p in out.iterdir()}
    code, _, err = run_cli("predict", "--model", run["folder"], image, "--out", out, "--cache", cache)
    assert code == 2 and "not an empty folder" in err
    assert json.loads((out / "predictions.json").read_text()) == rows


def test_encoder_lora_trains_the_encoder_on_images_and_evaluates_without_the_cache(data, tmp_path):
    """`--encoder-lora`: no embedding is cached or read (the encoder trains), the LoRA weights move from their
    identity start, and evaluate and predict encode the images through the trained encoder."""
    cache, folder = tmp_path / "cache", tmp_path / "run"
    code, out, err = run_cli("train", "--data", data, "--out", folder, "--backbone", "tiny_random", "--steps", 3,
                             "--cache", cache, "--masks", 0.5, "--seed", 0, "--encoder-lora", 2)
    assert code == 0, err
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["model_config"]["encoder_lora"] == 2
    ups = {k: v for k, v in torch.load(folder / "last.pt", weights_only=False)["state"].items()
           if k.startswith("backbone.image_encoder.") and k.endswith("_up.weight")}
    assert ups and any(v.abs().sum() > 0 for v in ups.values())  # they start at zero
    path = tmp_path / "eval.json"
    code, out, err = run_cli("evaluate", "--data", data, "--model", folder, "--split", "test", "--json", path,
                             "--cache", cache)
    assert code == 0, err
    assert json.loads(path.read_text())["n_images"] == 2
    code, out, err = run_cli("predict", "--model", folder, data / "images" / f"{IDS[0]}.png", "--out",
                             tmp_path / "pred", "--cache", cache)
    assert code == 0, err
    assert not list(cache.rglob("*.pt")), "an encoder that trains must not fill the embedding cache"


def test_a_run_starts_or_resumes_only_from_the_same_encoder_setting(run, data, cache, tmp_path):
    """LoRA weights cannot be carried into a frozen-encoder run (or another rank), nor dropped on resume: refused in
    one line, before anything is written."""
    code, _, err = run_cli("train", "--data", data, "--out", tmp_path / "warm", "--backbone", "tiny_random",
                           "--steps", 2, "--cache", cache, "--masks", 0.5, "--init", run["folder"],
                           "--encoder-lora", 2)
    _assert_refused(code, err, "train", "trained with the frozen encoder", "encoder LoRA rank 2", progress=True)
    assert not (tmp_path / "warm").exists()
    code, _, err = run_cli("train", "--data", data, "--out", run["folder"], "--backbone", "tiny_random",
                           "--steps", 2, "--cache", cache, "--masks", 0.5, "--encoder-lora", 2)
    _assert_refused(code, err, "train", "last.pt", "trained with the frozen encoder", progress=True)


def test_a_run_resumes_only_with_the_settings_it_was_started_with(run, data, cache):
    """Another method, other trainable parts, other masks or tags, or other settings in a run folder that holds
    last.pt: one line, not a traceback, and the run's summary untouched (a resumed run trained on as the old one
    while summary.json claimed the new settings). More steps are allowed (test_second_train_resumes_from_the_cache)."""
    for extra, said in ((["--method", "supervised"], "a run of adasam on tiny_random, this one asks for supervised"),
                        (["--freeze-adapter"], "trains other parts than this run would"),
                        (["--seed", 1], "started with other masked, tagged, unlabeled or val images"),
                        (["--tags", "masked"], "started with other masked, tagged, unlabeled or val images"),
                        (["--no-unlabeled"], "started with other training settings")):
        code, _, err = run_cli("train", "--data", data, "--out", run["folder"], "--backbone", "tiny_random",
                               "--steps", 2, "--cache", cache, "--masks", 0.5, *extra)
        _assert_refused(code, err, "train", "last.pt", said, progress=True)
    summary = json.loads((run["folder"] / "summary.json").read_text())
    assert (summary["seed"], summary["tags"], summary["train_config"]["use_unlabeled"]) == (0, "all", True)


# -- bad input --------------------------------------------------------------------------------------------------------

@pytest.fixture
def small(tmp_path) -> Path:
    """A valid 6-image folder with a manifest (pool: img_000 (no blob), img_003, img_004, img_005)."""
    return write_blob_dataset(tmp_path / "small", n=6, negatives=1, size=(40, 48))


def _assert_refused(code: int, err: str, command: str, *needles: str, progress: bool = False) -> None:
    """Exit status 2 and one stderr line (plus, where the refusal needs the embeddings, the progress bar)."""
    assert code == 2
    lines = err.replace("\r", "\n").strip().splitlines()
    if progress:
        lines = [line for line in lines if line.strip() and not line.startswith("embedding:")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"adasam {command}: error: ")
    for needle in needles:
        assert needle in lines[0]


def _train(data: Path, out: Path, cache: Path, *extra) -> tuple[int, str, str]:
    return run_cli("train", "--data", data, "--out", out, "--backbone", "tiny_random", "--steps", 2,
                   "--cache", cache, *extra)


def test_unreadable_image(small, tmp_path):
    bad = small / "images" / "img_003.png"
    bad.write_text("not a picture, just text\n")
    code, _, err = _train(small, tmp_path / "run", tmp_path / "cache")
    _assert_refused(code, err, "train", str(bad), "not a readable image")
    assert not (tmp_path / "run").exists()


def test_mask_of_another_size(small, tmp_path):
    bad = small / "masks" / "img_004.png"
    Image.fromarray(np.zeros((41, 48), np.uint8)).save(bad)
    code, _, err = _train(small, tmp_path / "run", tmp_path / "cache")
    _assert_refused(code, err, "train", str(bad), "48x41", "48x40")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("layout", ["nothing", "empty images/"])
def test_empty_data_folder(tmp_path, layout):
    data = tmp_path / "empty"
    (data / "images" if layout != "nothing" else data).mkdir(parents=True)
    code, _, err = _train(data, tmp_path / "run", tmp_path / "cache")
    _assert_refused(code, err, "train", "no images")
    assert not (tmp_path / "run").exists()


def test_unknown_backbone(small, tmp_path):
    code, _, err = run_cli("train", "--data", small, "--out", tmp_path / "run", "--backbone", "vgg16")
    _assert_refused(code, err, "train", "unknown backbone", "vgg16")
    assert not (tmp_path / "run").exists()


def test_no_masked_image_contains_the_target(tmp_path):
    data = write_blob_folder(tmp_path / "blank", [False] * 6, size=(30, 30))
    code, _, err = _train(data, tmp_path / "run", tmp_path / "cache", "--masks", 1.0)
    _assert_refused(code, err, "train", "containing the target", "--masks", progress=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, needle", [(["--encoder-lora", "-1"], "rank >= 1"),
                                           (["--encoder-lora", "2", "--method", "supervised"], "keep it frozen")])
def test_encoder_lora_refusals(small, tmp_path, extra, needle):
    code, _, err = _train(small, tmp_path / "run", tmp_path / "cache", *extra)
    _assert_refused(code, err, "train", "--encoder-lora" if needle == "rank >= 1" else "encoder", needle)
    assert not (tmp_path / "run").exists()


def test_masks_fraction_out_of_range(small, tmp_path):
    code, _, err = _train(small, tmp_path / "run", tmp_path / "cache", "--masks", 0)
    _assert_refused(code, err, "train", "--masks")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, needle", [(["--seed", "-1"], "--seed must be 0 or more"),
                                           (["--cam-threshold", "7"], "--cam-threshold is a probability in (0, 1)"),
                                           (["--cam-threshold", "nan"], "--cam-threshold is a probability in (0, 1)")])
def test_a_seed_or_threshold_out_of_range_is_refused(small, tmp_path, extra, needle):
    """A negative seed ended in numpy's traceback; a threshold of 7 trained a model whose every prompt fell back."""
    code, _, err = _train(small, tmp_path / "run", tmp_path / "cache", *extra)
    _assert_refused(code, err, "train", needle)
    assert not (tmp_path / "run").exists()


def test_an_init_from_another_backbone_is_refused_before_the_data_is_embedded(run, small, tmp_path):
    """It failed in load_state_dict with a traceback, after every image was encoded."""
    code, _, err = run_cli("train", "--data", small, "--out", tmp_path / "warm", "--backbone", "micro_random",
                           "--steps", 2, "--cache", tmp_path / "cache", "--init", run["folder"])
    _assert_refused(code, err, "train", "trained on backbone tiny_random", "micro_random")  # no progress bar
    assert not (tmp_path / "warm").exists() and not (tmp_path / "cache").exists()


def test_evaluate_refuses_bad_input(run, data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    bad = copy / "images" / f"{min(i for i in IDS if SPLIT[i] == 'test')}.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    report = tmp_path / "eval.json"
    code, _, err = run_cli("evaluate", "--data", copy, "--model", run["folder"], "--json", report,
                           "--cache", tmp_path / "cache")
    _assert_refused(code, err, "evaluate", str(bad))
    assert not report.exists()
    code, _, err = run_cli("evaluate", "--data", data, "--model", tmp_path / "no-run", "--json", report)
    _assert_refused(code, err, "evaluate", "no such model checkpoint")
    assert not report.exists()
    code, _, err = run_cli("evaluate", "--data", data, "--model", run["folder"], "--json", tmp_path)
    _assert_refused(code, err, "evaluate", "is a folder")


def test_evaluate_refuses_a_folder_whose_generated_split_moved_since_training(run, data, tmp_path):
    """One image more, and the generated split is drawn anew: images the run trained on could be scored as test."""
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    for k in range(10, 14):
        shutil.copy(copy / "images" / "img_001.png", copy / "images" / f"img_{k:03d}.png")
        shutil.copy(copy / "masks" / "img_001.png", copy / "masks" / f"img_{k:03d}.png")
    moved = [i for i, split in seeded_split(sorted([*IDS, *(f"img_{k:03d}" for k in range(10, 14))]), 0).items()
             if i in SPLIT and split != SPLIT[i]]
    assert moved  # the premise: adding images moves some of the old ones
    report = tmp_path / "eval.json"
    code, _, err = run_cli("evaluate", "--data", copy, "--model", run["folder"], "--json", report,
                           "--cache", tmp_path / "cache")
    _assert_refused(code, err, "evaluate", f"{len(moved)} image(s) are in another split than when")
    assert not report.exists()


def test_predict_refuses_an_unreadable_image(run, data, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("text")
    code, _, err = run_cli("predict", "--model", run["folder"], data / "images" / "img_000.png", bad,
                           "--out", tmp_path / "pred", "--cache", tmp_path / "cache")
    _assert_refused(code, err, "predict", str(bad))
    assert not (tmp_path / "pred").exists() and not (tmp_path / "pred.partial").exists()


def test_exit_code_of_the_real_command(small, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "app.cli", "train", "--data", str(small), "--out",
                             str(tmp_path / "run"), "--backbone", "nope"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "unknown backbone 'nope'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
