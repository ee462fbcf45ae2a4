"""`adasam train` under torchrun: two gloo processes on the CPU train like one process, only rank 0 writes, and a
stopped run resumes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.adasam import AdaSamConfig
from model.backbones import build_backbone
from model.distributed import Ranks, join
from model.train import build_training_model
from model_fixtures import one_torch_thread, write_blob_dataset  # noqa: F401 (autouse)

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def test_shares_hold_every_item_once_and_differ_by_at_most_one():
    items = list(range(7))
    for world in (1, 2, 3):
        shares = [Ranks(rank, world).share(items) for rank in range(world)]
        assert sorted(x for share in shares for x in share) == items
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_without_torchrun_a_command_is_one_rank(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ranks = join()
    assert (ranks.rank, ranks.world, ranks.main, ranks.joined) == (0, 1, True, False)
    assert ranks.from_main({"a": 1}) == {"a": 1}


def train(data: Path, out: Path, cache: Path, ranks: int, steps: int) -> subprocess.CompletedProcess:
    command = ["train", "--data", str(data), "--out", str(out), "--backbone", "micro_random", "--cache", str(cache),
               "--masks", "0.5", "--steps", str(steps), "--seed", "0"]
    launcher = [str(TORCHRUN), "--standalone", f"--nproc-per-node={ranks}", "-m", "app.cli"] if ranks > 1 \
        else [sys.executable, "-m", "app.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run(launcher + command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("distributed")
    data = write_blob_dataset(root / "data", n=36, negatives=8, size=(64, 72))
    cache = root / "cache"
    one = train(data, root / "one", cache, ranks=1, steps=60)
    two = train(data, root / "two", cache, ranks=2, steps=60)
    weights = {name: torch.load(root / name / "last.pt", weights_only=False) for name in ("one", "two")}
    return {"data": data, "cache": cache, "root": root, "one": one, "two": two, "weights": weights}


def test_two_ranks_train_like_one(runs):
    one = json.loads((runs["root"] / "one" / "summary.json").read_text())
    two = json.loads((runs["root"] / "two" / "summary.json").read_text())
    assert (one["ranks"], two["ranks"]) == (1, 2)
    assert one["best"]["step"] > 0 and two["best"]["step"] > 0
    # same seed and global batches: the same val Dice within noise (rank shares see other perturbation noise)
    assert abs(one["best"]["score"] - two["best"]["score"]) < 0.05, (one["best"], two["best"])
    # and the 2-rank run's steps train: the val Dice of this tiny backbone barely moves with training, so it alone
    # could not tell a 2-rank run that never stepped its optimizer (an audit's mutation) from one that trained. The
    # weights the ranks train together (adapter, map head; the image view trains before, outside DDP) must move from
    # their seeded start about as far as one rank's do. (Not closer to one rank's than that: per-rank perturbation
    # noise and dropout send 60 Adam steps of a tiny head apart.)
    saved = runs["weights"]["one"]
    start = build_training_model(AdaSamConfig.from_dict(saved["config"]), 0, build_backbone("micro_random"))
    initial = start.trainable_state()
    trained = {name: w["state"] for name, w in runs["weights"].items()}
    keys = [k for k in initial if k in trained["one"] and k in trained["two"] and initial[k].is_floating_point()
            and not k.startswith("image_view.")]
    assert any(k.startswith("adapter.") for k in keys) and any(k.startswith("classifier.") for k in keys)

    def moved(name: str) -> float:
        return float(sum(((trained[name][k].float() - initial[k].float()) ** 2).sum() for k in keys) ** 0.5)

    assert moved("one") > 0.5 and moved("two") > 0.5 * moved("one"), (moved("one"), moved("two"))


def test_only_rank_zero_writes_and_prints(runs):
    assert sorted(p.name for p in (runs["root"] / "two").iterdir()) == ["last.pt", "model.pt", "split.csv",
                                                                       "summary.json"]
    assert runs["two"].stdout.count("trained in") == 1 and "2 ranks" in runs["two"].stdout
    assert runs["two"].stdout.count('"step": 50') == 1  # one validation log line, from rank 0


def test_a_two_rank_run_resumes_where_it_stopped(runs, tmp_path):
    resumed = train(runs["data"], runs["root"] / "two", runs["cache"], ranks=2, steps=100)
    assert resumed.stdout.count("resuming") == 1 and "from step 60" in resumed.stdout
    summary = json.loads((runs["root"] / "two" / "summary.json").read_text())
    history_steps = [json.loads(line)["step"] for line in resumed.stdout.splitlines() if line.startswith('{"step"')]
    assert history_steps == [100] and summary["best"]["step"] >= 50  # no step before 60 was trained again


def embed(source: Path, cache: Path, ranks: int) -> subprocess.CompletedProcess:
    launcher = [str(TORCHRUN), "--standalone", f"--nproc-per-node={ranks}", "-m", "app.cli"] if ranks > 1 \
        else [sys.executable, "-m", "app.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run(launcher + ["embed", str(source), "--backbone", "micro_random", "--cache", str(cache)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_embed_splits_a_data_folder_across_ranks_and_a_rerun_encodes_nothing(tmp_path):
    data = write_blob_dataset(tmp_path / "data", n=9, negatives=2, size=(40, 48))
    first = embed(data, tmp_path / "cache", ranks=2)
    assert "9 images" in first.stdout and "rank 0 encoded 5 of its 5" in first.stdout and "2 ranks" in first.stdout
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 9  # rank 1 wrote its 4 too
    again = embed(data, tmp_path / "cache", ranks=2)
    assert "rank 0 encoded 0 of its 5" in again.stdout


def test_embed_fills_a_workspace_as_the_background_trainer_reads_it(tmp_path):
    from annotation import Store
    from app.testing import make_workspace
    from app.trainer import workspace_pixels
    from model.backbones import build_backbone
    from model.cache import EmbeddingCache, content_hash

    workspace = make_workspace(tmp_path, n=6, n_val=2)
    assert "6 images" in embed(workspace, tmp_path / "cache", ranks=1).stdout
    cache = EmbeddingCache(tmp_path / "cache", build_backbone("micro_random"))
    with Store(workspace) as store:
        assert all(cache.path_for(content_hash(workspace_pixels(store, i))).exists() for i in store.image_ids())


def test_embed_refuses_a_folder_that_is_neither(tmp_path):
    result = subprocess.run([sys.executable, "-m", "app.cli", "embed", str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "images" in result.stderr and "Traceback" not in result.stderr


def test_score_splits_the_unscored_pool_across_ranks_and_orders_the_queue(tmp_path):
    from annotation import Store, import_sources, next_task
    from app.seed import write_phantoms
    from app.status import QUEUE_STRATEGY
    from app.testing import make_workspace
    from app.trainer import BackgroundTrainer
    from app_fixtures import label

    workspace = make_workspace(tmp_path, n=10, n_val=3)
    trainer = BackgroundTrainer(workspace, "micro_random", tmp_path / "cache", round_every=3, steps=4)
    trainer.store.set_setting(QUEUE_STRATEGY, "combined")  # a strategy that orders by the scores
    label(trainer.store, 3)
    trainer.train_round()  # publishes r0001 and scores today's pool
    version = trainer.store.latest_model().version
    trainer.store.close()
    write_phantoms(tmp_path / "more", n=9, n_val=0, seed=7)  # new scans arrive after the round
    with Store(workspace) as store:
        import_sources(store, [tmp_path / "more" / "pool" / "images"], with_masks=False, progress=False)
        new = store.unscored_ids(version)
        assert len(new) == 9
    launcher = [str(TORCHRUN), "--standalone", "--nproc-per-node=2", "-m", "app.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(launcher + ["score", str(workspace), "--backbone", "micro_random", "--cache",
                                        str(tmp_path / "cache")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("scored 9 pool images") == 1 and "2 ranks" in result.stdout
    with Store(workspace) as store:
        assert store.unscored_ids(version) == [] and store.queue_model() == version
        scored = {p.image_id: p.uncertainty for p in store.pool_predictions(version)}
        assert set(new) <= set(scored)
        assert scored[next_task(store, "ann").image.id] == max(scored.values())  # combined: most uncertain first


def test_score_without_a_model_says_so(tmp_path):
    from app.testing import make_workspace

    workspace = make_workspace(tmp_path, n=4, n_val=1)
    result = subprocess.run([sys.executable, "-m", "app.cli", "score", str(workspace), "--backbone", "micro_random"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no published model yet" in result.stderr and "Traceback" not in result.stderr
