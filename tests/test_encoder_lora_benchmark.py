"""benchmarks/encoder_lora.py's bookkeeping: a run past the deadline is stopped and marked cut, a finished one keeps
its own training time, the log's validation records are read back, and the table reports mean ± sd per variant.
(The training itself is `adasam train --encoder-lora`, tested in test_model_cli.py; the script's full run is a GPU
lease's work.)"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from encoder_lora import live_precision, stop, table  # noqa: E402


def _run(folder: Path, seconds: float, records: list[dict], summary: dict | None = None) -> dict:
    """A stand-in run: a process that logs `records` as `adasam train` does, then sleeps `seconds`."""
    folder.mkdir(parents=True)
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    lines = "".join(f"print({json.dumps(json.dumps(r))}, flush=True);" for r in records)
    log = (folder / "train.log").open("w")
    process = subprocess.Popen([sys.executable, "-c", f"import time;{lines}time.sleep({seconds})"], stdout=log)
    return {"label": "encoder LoRA rank 8", "fraction": 0.1, "seed": 0, "folder": folder, "process": process,
            "started": time.time(), "log": log}


def test_a_run_past_the_deadline_is_stopped_and_marked_cut(tmp_path):
    records = [{"step": 50, "score": 0.7}, {"step": 100, "score": 0.74}, {"step": 150, "score": 0.74}]
    run = _run(tmp_path / "cut", 60, records)
    time.sleep(1.0)  # let it log
    started = time.time()
    result = stop(run, deadline=time.time() + 1)
    assert time.time() - started < 10 and run["process"].returncode is not None
    assert result["cut"] and result["steps"] == 150 and result["val_best"] == 0.74
    assert result["best_step"] == 150  # equal scores: the later step, as the trainer keeps


def test_a_finished_run_keeps_its_own_training_time(tmp_path):
    run = _run(tmp_path / "done", 0, [{"step": 50, "score": 0.6}], summary={"train_seconds": 12.5})
    result = stop(run, deadline=time.time() + 30)
    assert not result["cut"] and result["returncode"] == 0 and result["train_seconds"] == 12.5


def test_table_gives_mean_and_sd_per_variant_and_marks_cut_runs():
    rows = [{"label": "frozen encoder", "fraction": 0.1, "seed": s, "cut": False, "steps": 400, "dice_lesion": d,
             "dice_all": d, "presence_auc": 0.9, "prompt_box_iou_lesion": 0.5} for s, d in ((0, 0.6), (1, 0.7))]
    rows.append({"label": "encoder LoRA rank 8", "fraction": 1.0, "seed": 0, "cut": True, "steps": 450,
                 "dice_lesion": 0.68, "dice_all": 0.7, "presence_auc": 0.92, "prompt_box_iou_lesion": 0.58})
    rows.append({"label": "encoder LoRA rank 8", "fraction": 0.1, "seed": 0, "cut": True, "steps": 0,
                 "error": "no model.pt"})
    lines = table(rows).splitlines()
    frozen = next(line for line in lines if line.startswith("| frozen encoder | 0.1 "))
    assert "0.650 ± 0.050" in frozen and "| 0,1 |" in frozen and "400, 400" in frozen
    unscored = next(line for line in lines if line.startswith("| encoder LoRA rank 8 | 0.1 "))
    assert "| - |" in unscored and "0 (cut)" in unscored
    assert "| encoder LoRA rank 8 | 1 | 0.680 |" in table(rows)


def test_the_report_names_the_live_encoders_precision(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert live_precision() == "float32 (TF32 on a GPU)"
