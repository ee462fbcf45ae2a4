"""A trainer on another machine: tokens stored hashed and revocable, 401 for anything else with nothing changed, one
owner per round, uploads checked on the server's own validation set before they serve, and the whole loop
(in-process, then `adasam serve --remote-trainers` with `adasam trainer --server` as real processes, also under
torchrun)."""
from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from annotation import RoundTaken, Store, WorkspaceError
from app.cli import main
from app.model_slot import ModelSlot
from app.remote_trainer import RemoteError, RemoteTrainer, RoundLost, TrainerClient
from app.rounds import RoundPlan, items, plan_round, round_finished, round_score, val_summary, validation_masks
from app.status import IMAGE_VIEW, RETRAIN_REQUESTED, read_remote_status
from app.trainer import workspace_pixels
from app.trainer_api import API, TrainerAPI
from app.testing import free_port
from annotation_fixtures import seed_images
from app_fixtures import Server, label, make_workspace, wait_for
from model import train as train_module
from model.distributed import Ranks

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture
def workspace(tmp_path) -> Path:
    return make_workspace(tmp_path, n=12, n_val=3, size=(64, 72))


@pytest.fixture
def api(workspace):
    """The endpoints on a bare FastAPI app (no Gradio), trainers gpu1 and gpu2, 4 labels in (a round is due)."""
    store = Store(workspace)
    label(store, 4)
    tokens = {name: store.add_trainer_token(name) for name in ("gpu1", "gpu2")}
    slot = ModelSlot(store, "micro_random", workspace.parent / "cache")
    app = FastAPI(routes=TrainerAPI(store, slot, round_every=2, steps=6, accept_rounds=True).router().routes)
    yield {"store": store, "slot": slot, "tokens": tokens, "http": TestClient(app), "app": app,
           "root": workspace.parent}
    store.close()


def call(api, method: str, path: str, trainer: str | None = "gpu1", **kwargs):
    headers = {"Authorization": f"Bearer {api['tokens'][trainer]}"} if trainer else {}
    return api["http"].request(method, API + path, headers={**headers, **kwargs.pop("headers", {})}, **kwargs)


def client(api, trainer: str = "gpu1") -> TrainerClient:
    return TrainerClient("http://testserver", api["tokens"][trainer], http=TestClient(api["app"]))


def state(store: Store) -> tuple:
    """Everything a refused request must leave as it was."""
    return (store.rounds(), store.models(), store.events(limit=1000), store.trainer_tokens())


# -- tokens and rounds in the store -----------------------------------------------------------------------------

def test_a_token_is_stored_only_as_a_hash_and_can_be_revoked_or_replaced(workspace):
    with Store(workspace) as store:
        token = store.add_trainer_token("gpu1")
        assert store.trainer_for_token(token) == "gpu1" and store.trainer_for_token(token + "x") is None
        assert token.encode() not in (workspace / "workspace.db").read_bytes()
        replaced = store.add_trainer_token("gpu1")
        assert store.trainer_for_token(token) is None and store.trainer_for_token(replaced) == "gpu1"
        training = store.claim_round(4, "gpu1")
        store.revoke_trainer_token("gpu1")
        assert store.trainer_for_token(replaced) is None
        assert store.rounds(training)[0].status == "cancelled"  # it could not upload that round any more
        assert [t["name"] for t in store.trainer_tokens()] == ["gpu1"] and store.trainer_tokens()[0]["revoked_at"]
        with pytest.raises(WorkspaceError):
            store.revoke_trainer_token("gpu1")  # nothing left to revoke
        with pytest.raises(WorkspaceError):
            store.add_trainer_token("trainer")  # the workspace's own trainer's name


def test_a_round_has_one_owner_until_it_falls_silent(workspace):
    with Store(workspace) as store:
        first = store.claim_round(4, "gpu1")
        with pytest.raises(RoundTaken, match="gpu1"):
            store.claim_round(4, "gpu2")
        with pytest.raises(RoundTaken):
            store.touch_round(first, "gpu2")
        assert store.touch_round(first, "gpu1").owner == "gpu1"
        second = store.claim_round(4, "gpu2", lease_seconds=0.0)  # gpu1 counts as silent at once
        assert store.rounds(first)[0].status == "cancelled" and "took over" in store.rounds(first)[0].error
        with pytest.raises(RoundTaken, match="was cancelled"):
            store.touch_round(first, "gpu1")
        store.finish_round(second, "done")
        local = store.start_round(4)  # the workspace's own trainer's round never times out
        with pytest.raises(RoundTaken):
            store.claim_round(4, "gpu1", lease_seconds=0.0)
        assert store.rounds(local)[0].status == "running"


def test_only_the_owner_of_a_running_round_may_finish_it(workspace):
    with Store(workspace) as store:
        round_id = store.claim_round(4, "gpu1")
        with pytest.raises(RoundTaken):
            store.finish_round(round_id, "done", owner="gpu2")
        store.finish_round(round_id, "failed", owner="gpu1")
        with pytest.raises(RoundTaken):  # finished: not again, not even by its owner
            store.finish_round(round_id, "done", owner="gpu1")
        assert store.rounds(round_id)[0].status == "failed"


# -- the endpoints ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [("POST", "/rounds"), ("GET", "/images/1"), ("GET", "/models/r0001"),
                                          ("POST", "/rounds/1/progress"), ("POST", "/rounds/1/failed"),
                                          ("POST", "/rounds/1/model")])
def test_a_missing_wrong_or_revoked_token_gets_401_and_changes_nothing(api, method, path):
    store = api["store"]
    revoked = store.add_trainer_token("old")
    store.revoke_trainer_token("old")
    before = state(store)
    body = {"content": b"junk"} if path.endswith("model") else {"json": {"step": 1}} if method == "POST" else {}
    for headers in ({}, {"Authorization": "Bearer adasam-trainer-guess"}, {"Authorization": f"Bearer {revoked}"},
                    {"Authorization": api["tokens"]["gpu1"]}):  # the last: a real token without "Bearer"
        response = api["http"].request(method, API + path, headers=headers, **body)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert state(store) == before


def test_a_claim_hands_out_the_round_plan_and_a_second_trainer_waits(api):
    store = api["store"]
    answer = call(api, "POST", "/rounds").json()
    plan = RoundPlan.from_json(answer["plan"])
    assert plan.round_id == answer["round"] and store.rounds(plan.round_id)[0].owner == "gpu1"
    expected = plan_round(store, plan.round_id)
    assert sorted(plan.masks) == sorted(expected.masks) and plan.tags == expected.tags
    assert all(np.array_equal(plan.masks[i], expected.masks[i]) for i in plan.masks)
    assert sorted(plan.val_masks) == [10, 11, 12] and plan.init is None and plan.image_view is False
    store.set_setting(IMAGE_VIEW, True)  # adasam serve --image-view: remote rounds train the view too
    assert RoundPlan.from_json(plan_round(store, plan.round_id).to_json()).image_view is True
    store.set_setting(IMAGE_VIEW, False)
    assert answer["images"] == {str(i): store.image(i).sha256 for i in plan.image_ids()}
    assert answer["backbone"]["identity"] == api["slot"].base.identity
    pixels = np.load(io.BytesIO(call(api, "GET", "/images/1").content))
    assert np.array_equal(pixels, store.load_image(1))
    (outside,) = seed_images(store, 1)  # imported after the claim: not an image of this round
    refused = call(api, "GET", f"/images/{outside}")
    assert refused.status_code == 403 and "not in your round's plan" in refused.json()["detail"]
    assert call(api, "GET", "/images/1", "gpu2").status_code == 409  # a token without the round downloads nothing
    label(store, 2)  # new labels, then a server restart: the plan handed out still says what may be fetched
    restarted = FastAPI(routes=TrainerAPI(store, api["slot"], 2, 6, accept_rounds=True).router().routes)
    headers = {"Authorization": f"Bearer {api['tokens']['gpu1']}"}
    assert all(TestClient(restarted).get(API + f"/images/{i}", headers=headers).status_code == 200
               for i in plan.image_ids())
    assert TestClient(restarted).get(API + f"/images/{outside}", headers=headers).status_code == 403

    taken = call(api, "POST", "/rounds", "gpu2")
    assert taken.status_code == 409 and "gpu1" in taken.json()["detail"]
    assert call(api, "POST", f"/rounds/{plan.round_id}/progress", "gpu2", json={"step": 3}).status_code == 409
    assert call(api, "POST", f"/rounds/{plan.round_id}/model", "gpu2", content=b"x").status_code == 409
    assert call(api, "POST", f"/rounds/{plan.round_id}/progress", json={"step": 3, "total": 6}).status_code == 200
    assert read_remote_status(store.root)["step"] == 3
    odd = call(api, "POST", f"/rounds/{plan.round_id}/progress", content=b'{"step": Infinity, "total": 1e999}',
               headers={"Content-Type": "application/json"})
    assert odd.status_code == 200 and read_remote_status(store.root)["step"] is None  # not a step: not shown
    assert store.rounds(plan.round_id)[0].status == "running" and not store.models()


def test_a_server_that_trains_itself_refuses_claims(api):
    app = FastAPI(routes=TrainerAPI(api["store"], api["slot"], 2, 6, accept_rounds=False).router().routes)
    before = state(api["store"])
    headers = {"Authorization": f"Bearer {api['tokens']['gpu1']}"}
    response = TestClient(app).post(API + "/rounds", headers=headers)
    assert response.status_code == 409 and "--remote-trainers" in response.json()["detail"]
    assert state(api["store"]) == before
    assert TestClient(app).get(API + "/images/1", headers=headers).status_code == 409  # nor does it hand out images


def test_a_bad_upload_is_refused_and_its_round_recorded_as_failed(api, tmp_path):
    store, slot = api["store"], api["slot"]
    round_id = call(api, "POST", "/rounds").json()["round"]
    response = call(api, "POST", f"/rounds/{round_id}/model", content=b"not a checkpoint")
    assert response.status_code == 422 and store.rounds(round_id)[0].status == "failed"
    assert not store.models() and not list((store.root / "models").glob(".upload*"))

    round_id = call(api, "POST", "/rounds").json()["round"]  # a failed round waits for labels ...
    assert round_id is None
    label(store, 2)  # ... which came in
    round_id = call(api, "POST", "/rounds").json()["round"]
    from model.adasam import AdaSamConfig, build_adasam, save_checkpoint
    from model.backbones import backbone_view

    model = build_adasam(AdaSamConfig(backbone="micro_random"), backbone_view(slot.base))
    save_checkpoint(model, tmp_path / "other.pt", {"backbone_identity": "sam_vit_b-1-abc"})
    response = call(api, "POST", f"/rounds/{round_id}/model", content=(tmp_path / "other.pt").read_bytes())
    assert response.status_code == 422 and "sam_vit_b-1-abc" in response.json()["detail"]

    class Code:  # a pickle that would run code if loaded with weights_only=False
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    label(store, 2)
    round_id = call(api, "POST", "/rounds").json()["round"]
    payload = torch.load(tmp_path / "other.pt", weights_only=True)
    payload["backbone_identity"] = slot.base.identity
    name = next(iter(payload["state"]))
    payload["state"][name] = torch.zeros(3, 1, 7)  # a tensor of the wrong shape
    torch.save(payload, tmp_path / "misfit.pt")
    response = call(api, "POST", f"/rounds/{round_id}/model", content=(tmp_path / "misfit.pt").read_bytes())
    assert response.status_code == 422 and "do not fit" in response.json()["detail"]
    assert store.rounds(round_id)[0].status == "failed"

    label(store, 2)
    round_id = call(api, "POST", "/rounds").json()["round"]
    torch.save({"format": 2, "config": {"backbone": "micro_random"}, "state": {}, "x": Code()}, tmp_path / "evil.pt")
    response = call(api, "POST", f"/rounds/{round_id}/model", content=(tmp_path / "evil.pt").read_bytes())
    assert response.status_code == 422 and not (tmp_path / "pwned").exists() and not store.models()


def test_an_upload_with_weights_left_out_or_not_finite_is_refused(api, tmp_path):
    """Either would serve a model no one trained (weights as built, or NaN) if the round were published."""
    from model.adasam import AdaSamConfig, build_adasam, save_checkpoint
    from model.backbones import backbone_view

    store, slot = api["store"], api["slot"]
    save_checkpoint(build_adasam(AdaSamConfig(backbone="micro_random"), backbone_view(slot.base)), tmp_path / "m.pt")
    whole = torch.load(tmp_path / "m.pt", weights_only=True)
    name = next(iter(whole["state"]))
    for change, said in ((lambda state: state.pop(name), "weights missing"),
                         (lambda state: state[name].fill_(float("nan")), "not finite")):
        payload = {**whole, "state": {k: v.clone() for k, v in whole["state"].items()}}
        change(payload["state"])
        torch.save(payload, tmp_path / "broken.pt")
        round_id = call(api, "POST", "/rounds").json()["round"]
        response = call(api, "POST", f"/rounds/{round_id}/model", content=(tmp_path / "broken.pt").read_bytes())
        assert response.status_code == 422 and said in response.json()["detail"]
        assert store.rounds(round_id)[0].status == "failed" and not store.models()
        label(store, 2)  # the next round is due


def test_an_upload_whose_encoder_trained_is_refused(api, tmp_path):
    """A model trained with encoder LoRA reads images, not the server's cached embeddings: it cannot be served."""
    from model.adasam import AdaSamConfig, build_adasam, save_checkpoint
    from model.backbones import backbone_view

    round_id = call(api, "POST", "/rounds").json()["round"]
    model = build_adasam(AdaSamConfig(backbone="micro_random"), backbone_view(api["slot"].base))
    save_checkpoint(model, tmp_path / "frozen.pt")
    payload = torch.load(tmp_path / "frozen.pt", weights_only=True)
    payload["config"]["encoder_lora"] = 4
    torch.save(payload, tmp_path / "lora.pt")
    response = call(api, "POST", f"/rounds/{round_id}/model", content=(tmp_path / "lora.pt").read_bytes())
    assert response.status_code == 422 and "encoder LoRA" in response.json()["detail"]
    assert not api["store"].models() and api["store"].rounds(round_id)[0].status == "failed"


def test_a_remote_round_is_checked_on_the_servers_validation_set_and_swapped_in(api):
    store, slot = api["store"], api["slot"]
    trainer = RemoteTrainer(client(api), "micro_random", api["root"] / "trainer-cache", api["root"] / "mirror")
    assert trainer.run(rounds=1, poll_s=0) == 1
    rnd = store.rounds()[-1]
    model = store.model("r0001")
    assert (rnd.status, rnd.owner, rnd.model_version, model.published) == ("done", "gpu1", "r0001", True)
    assert (model.metrics["trainer"], model.metrics["ranks"], model.metrics["steps"]) == ("gpu1", 1, 6)

    masks = validation_masks(store)
    val = items(slot.cache, lambda i: workspace_pixels(store, i), sorted(masks), masks)
    assert rnd.val_dice == pytest.approx(round_score(val_summary(slot.base, model.checkpoint_path, val)))
    assert slot.refresh() and slot.version == "r0001"  # served from the next request on
    assert len(list((api["root"] / "mirror" / "images").glob("*.npy"))) == len(store.images())  # all in the plan

    again = call(api, "POST", f"/rounds/{rnd.id}/model", content=Path(model.checkpoint_path).read_bytes())
    assert again.status_code == 409 and [m.version for m in store.models()] == ["r0001"]  # one upload per round

    label(store, 2)
    downloads = []
    real_image = trainer.client.image
    trainer.client.image = lambda i: downloads.append(i) or real_image(i)
    assert trainer.run(rounds=1, poll_s=0) == 1
    assert downloads == []  # only the images the mirror lacks are fetched: none this time
    second = store.rounds()[-1]
    assert second.model_version == "r0002" and store.model("r0002").metrics["trainer"] == "gpu1"


def test_a_token_revoked_while_its_upload_is_scored_gets_nothing_published(api, monkeypatch):
    """The round is checked again in the transaction that would register the model, after the slow scoring."""
    store = api["store"]

    def revoked_meanwhile(*args, **kwargs):
        store.revoke_trainer_token("gpu1")
        return val_summary(*args, **kwargs)

    monkeypatch.setattr("app.rounds.val_summary", revoked_meanwhile)
    trainer = RemoteTrainer(client(api), "micro_random", api["root"] / "trainer-cache", api["root"] / "mirror")
    with pytest.raises(RemoteError, match="401"):  # its upload refused (409), then its next claim
        trainer.run(rounds=1, poll_s=0)
    assert not store.models() and not list((store.root / "models").glob("*.pt"))
    assert store.rounds()[-1].status == "cancelled"


def test_a_model_is_registered_only_with_its_round_ended_in_the_same_transaction(api, monkeypatch):
    """Registering the model and ending the round were two transactions: a token revoked between them left a served
    model whose round read 'cancelled'. Now a failure ending the round registers nothing."""
    store = api["store"]
    trainer = RemoteTrainer(client(api), "micro_random", api["root"] / "trainer-cache", api["root"] / "mirror")
    calls = []

    def failing_once(*args, **kwargs):  # ending the round fails; recording the failure afterwards works
        calls.append(args)
        if len(calls) == 1:
            trainer.stop.set()  # the trainer reports the failed upload and returns instead of polling on
            raise OSError("disk full")
        return round_finished(*args, **kwargs)

    monkeypatch.setattr("app.trainer_api.round_finished", failing_once)
    assert trainer.run(rounds=1, poll_s=0) == 0
    assert len(calls) == 2 and not store.models() and not list((store.root / "models").glob("*.pt"))
    assert store.rounds()[-1].status == "failed" and store.rounds()[-1].model_version is None


def test_a_trainer_that_loses_its_round_stops_and_uploads_nothing(api):
    store = api["store"]
    trainer = RemoteTrainer(client(api), "micro_random", api["root"] / "trainer-cache", api["root"] / "mirror")
    real = trainer.client.progress

    def taken_over(round_id, step, total):
        store.claim_round(store.label_count("pool"), "gpu2", lease_seconds=0.0)  # gpu1 fell silent meanwhile
        trainer.stop.set()  # run() returns after this round
        real(round_id, step, total)

    trainer.client.progress = taken_over
    assert trainer.run(rounds=1, poll_s=0) == 0
    lost, taken = store.rounds()
    assert (lost.status, lost.owner, taken.status, taken.owner) == ("cancelled", "gpu1", "running", "gpu2")
    assert not store.models() and not (api["root"] / "mirror" / f"round-{lost.id:04d}").exists()
    with pytest.raises(RoundLost):
        trainer.client.progress = real
        real(lost.id, 1, 6)


# -- the command line and real processes --------------------------------------------------------------------------

def test_trainer_token_command_writes_a_private_file_lists_names_and_revokes(workspace, tmp_path, capsys):
    token_file = tmp_path / "gpu1.token"
    assert main(["trainer-token", str(workspace), "gpu1", "--out", str(token_file)]) == 0
    token = token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and token not in capsys.readouterr().out
    with Store(workspace) as store:
        assert store.trainer_for_token(token) == "gpu1"
    assert main(["trainer-token", str(workspace), "--list"]) == 0
    listed = capsys.readouterr().out
    assert "gpu1" in listed and "valid" in listed and token not in listed
    assert main(["trainer-token", str(workspace), "gpu1", "--revoke"]) == 0
    with Store(workspace) as store:
        assert store.trainer_for_token(token) is None
    assert main(["trainer-token", str(workspace), "bad:name"]) == 2
    assert main(["trainer-token", str(workspace), "nobody", "--revoke"]) == 2
    capsys.readouterr()
    assert main(["trainer"]) == 2 and "--server" in capsys.readouterr().err
    assert main(["trainer", "--server", "http://127.0.0.1:1"]) == 2 and "--token" in capsys.readouterr().err
    assert main(["trainer", str(workspace), "--token", str(token_file)]) == 2
    assert main(["trainer", "--server", "ftp://x", "--token", str(token_file)]) == 2


def test_a_token_file_that_cannot_be_written_leaves_the_old_token_working(workspace, tmp_path, capsys):
    token_file = tmp_path / "gpu1.token"
    assert main(["trainer-token", str(workspace), "gpu1", "--out", str(token_file)]) == 0
    token = token_file.read_text().strip()
    capsys.readouterr()
    (tmp_path / "a-file").write_text("x")
    for unwritable, said in ((tmp_path / "a-file" / "token", "token was not changed"), (tmp_path, "is a folder")):
        assert main(["trainer-token", str(workspace), "gpu1", "--out", str(unwritable)]) == 2
        assert said in capsys.readouterr().err
        with Store(workspace) as store:
            assert store.trainer_for_token(token) == "gpu1"
    assert main(["trainer-token", str(workspace), "gpu1", "--out", str(token_file)]) == 0  # replaced in place
    assert token_file.read_text().strip() != token and not list(tmp_path.glob("*.tmp"))


def remote_trainer(server: Server, token: Path, root: Path, ranks: int = 1) -> subprocess.CompletedProcess:
    command = ["trainer", "--server", server.url, "--token", str(token), "--backbone", "micro_random", "--cache",
               str(root / "trainer-cache"), "--data", str(root / f"mirror-{ranks}"), "--rounds", "1", "--poll", "0.5"]
    launcher = [str(TORCHRUN), "--standalone", f"--nproc-per-node={ranks}", "-m", "app.cli"] if ranks > 1 \
        else [sys.executable, "-m", "app.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run(launcher + command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_serve_with_remote_trainers_publishes_their_rounds_and_rescores_the_pool(workspace, tmp_path):
    """Real processes: `adasam serve --remote-trainers` (its own trainer process only embeds and scores) and
    `adasam trainer --server`, once alone and once as 2 torchrun processes. --max-request-mb 0.1 is below a
    checkpoint's size: uploads have their own limit."""
    token = tmp_path / "token"
    assert main(["trainer-token", str(workspace), "gpu1", "--out", str(token)]) == 0
    with Store(workspace) as store:
        label(store, 4)
    server = Server(workspace, tmp_path / "serve.log", "--remote-trainers", "--round-every", "2", "--train-steps",
                    "6", "--max-request-mb", "0.1", "--no-image-view")
    try:
        with Store(workspace) as store:
            one = remote_trainer(server, token, tmp_path)
            assert "r0001 published" in one.stdout
            assert (store.rounds()[-1].owner, store.latest_model().version) == ("gpu1", "r0001")
            assert Path(store.latest_model().checkpoint_path).stat().st_size > 0.1 * 2**20
            wait_for(lambda: store.queue_model() == "r0001", what="the server's trainer process to re-score")
            label(store, 2)
            two = remote_trainer(server, token, tmp_path, ranks=2)
            assert "r0002 published" in two.stdout or "r0002 kept unpublished" in two.stdout
            model = store.model("r0002")
            assert (model.metrics["ranks"], model.metrics["trainer"]) == (2, "gpu1")
            assert [r.status for r in store.rounds()] == ["done", "done"]
    finally:
        server.stop()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_figures_a_trainer_reports_about_validation_are_not_taken(api, tmp_path):
    store, slot = api["store"], api["slot"]
    round_id = call(api, "POST", "/rounds").json()["round"]
    from model.adasam import AdaSamConfig, build_adasam, save_checkpoint
    from model.backbones import backbone_view

    model = build_adasam(AdaSamConfig(backbone="micro_random"), backbone_view(slot.base))
    save_checkpoint(model, tmp_path / "model.pt", {"metrics": {"dice_lesion": 0.99, "train_seconds": float("inf"),
                                                               "steps": 6, "ranks": 10 ** 400}})
    answer = call(api, "POST", f"/rounds/{round_id}/model", content=(tmp_path / "model.pt").read_bytes()).json()
    metrics = store.model(answer["version"]).metrics
    assert metrics["dice_lesion"] == answer["val_dice"] != 0.99 and metrics["steps"] == 6
    assert "train_seconds" not in metrics and "ranks" not in metrics  # not numbers a float can hold: dropped


def test_a_revoked_trainer_stops_and_one_that_cannot_reach_the_server_waits(api):
    store = api["store"]
    trainer = RemoteTrainer(client(api), "micro_random", api["root"] / "trainer-cache", api["root"] / "mirror")
    store.revoke_trainer_token("gpu1")
    with pytest.raises(RemoteError, match="401"):
        trainer.run(rounds=1, poll_s=0)
    said = []
    offline = RemoteTrainer(TrainerClient(f"http://127.0.0.1:{free_port()}", "token"), "micro_random",
                            api["root"] / "trainer-cache", api["root"] / "mirror",
                            say=lambda line: said.append(line) or offline.stop.set())
    assert offline.run(rounds=1, poll_s=0) == 0 and "cannot reach" in said[0]
    assert not store.rounds()


def test_a_trainer_stopped_mid_round_cancels_it_and_the_round_is_due_again_at_once(api):
    store = api["store"]
    trainer = RemoteTrainer(client(api), "micro_random", api["root"] / "trainer-cache", api["root"] / "mirror")
    real = trainer.client.progress

    def stop_now(round_id, step, total):  # SIGTERM arriving during training
        trainer.stop.set()
        real(round_id, step, total)

    trainer.client.progress = stop_now
    assert trainer.run(rounds=1, poll_s=0) == 0
    stopped = store.rounds()[-1]
    assert stopped.status == "cancelled" and "stopped" in stopped.error and not store.models()
    assert call(api, "POST", "/rounds", "gpu2").json()["round"] == stopped.id + 1  # no wait for new labels


def test_a_retrain_now_round_stopped_mid_way_is_due_again(api):
    store = api["store"]
    trainer = RemoteTrainer(client(api), "micro_random", api["root"] / "trainer-cache", api["root"] / "mirror")
    assert trainer.run(rounds=1, poll_s=0) == 1
    label(store, 1)  # one label of the two a round needs ...
    assert call(api, "POST", "/rounds", "gpu2").json()["round"] is None
    store.set_setting(RETRAIN_REQUESTED, 1.0, who="lead")  # ... and "Retrain now"
    real = trainer.client.progress

    def stop_now(round_id, step, total):
        trainer.stop.set()
        real(round_id, step, total)

    trainer.client.progress = stop_now
    assert trainer.run(rounds=1, poll_s=0) == 0 and store.rounds()[-1].status == "cancelled"
    assert call(api, "POST", "/rounds", "gpu2").json()["round"] == store.rounds()[-2].id + 1  # not lost


def test_network_blips_cost_a_remote_trainer_neither_its_process_nor_its_round(api):
    """A download that times out cancels the round (due again at once) and the trainer asks again; a progress
    report that fails is skipped, and the round trains on to its upload."""
    store = api["store"]
    said = []
    trainer = RemoteTrainer(client(api), "micro_random", api["root"] / "trainer-cache", api["root"] / "mirror",
                            say=said.append)
    real_image, real_progress, blips = trainer.client.image, trainer.client.progress, []

    def image_times_out_once(image_id):
        if not blips:
            blips.append("image")
            raise RemoteError("cannot reach http://testserver: timed out", retry=True)
        return real_image(image_id)

    def progress_fails_once(round_id, step, total):
        if step > 1 and "progress" not in blips:
            blips.append("progress")
            raise RemoteError("POST /rounds/1/progress: 502 Bad Gateway", retry=True)
        real_progress(round_id, step, total)

    real_upload = trainer.client.upload

    def upload_fails_once(round_id, checkpoint):
        if "upload" not in blips:
            blips.append("upload")
            raise RemoteError("POST /rounds/2/model: 502 Bad Gateway", retry=True)
        return real_upload(round_id, checkpoint)

    trainer.client.image, trainer.client.progress = image_times_out_once, progress_fails_once
    trainer.client.upload = upload_fails_once
    assert trainer.run(rounds=1, poll_s=0) == 1  # no exception: the process lives on
    assert blips == ["image", "progress", "upload"]
    download, upload, done = store.rounds()
    assert (download.status, upload.status, done.status) == ("cancelled", "cancelled", "done")  # each due again
    assert "timed out" in download.error and "502" in upload.error
    assert store.latest_model().version == done.model_version


def test_an_image_the_server_cannot_read_is_left_out_of_a_remote_round(api):
    store = api["store"]
    bad = store.images(split="pool", state="unlabeled")[0]
    store.files.path(bad.file).write_bytes(b"damaged")
    round_id = call(api, "POST", "/rounds").json()["round"]
    response = call(api, "GET", f"/images/{bad.id}")
    assert response.status_code == 410 and "cannot be read" in response.json()["detail"]
    call(api, "POST", f"/rounds/{round_id}/failed", json={"error": "test", "cancelled": True})
    said = []
    trainer = RemoteTrainer(client(api), "micro_random", api["root"] / "trainer-cache", api["root"] / "mirror",
                            say=said.append)
    assert trainer.run(rounds=1, poll_s=0) == 1
    assert store.rounds()[-1].status == "done" and any("cannot read are left out" in line for line in said)


def test_an_upload_whose_config_a_round_would_not_have_is_refused(api, tmp_path):
    """Settings a round does not decide would reach every annotator's proposals unchecked (300 cascade decodes a
    proposal); thresholds must be probabilities."""
    from model.adasam import AdaSamConfig, build_adasam, save_checkpoint
    from model.backbones import backbone_view

    store = api["store"]
    save_checkpoint(build_adasam(AdaSamConfig(backbone="micro_random"), backbone_view(api["slot"].base)),
                    tmp_path / "m.pt", {"backbone_identity": api["slot"].base.identity})
    whole = torch.load(tmp_path / "m.pt", weights_only=True)
    for change, said in (({"cascade": 300}, "cascade"), ({"cam_points": 50}, "cam_points"),
                         ({"presence_threshold": float("nan")}, "presence_threshold"),
                         ({"cam_threshold": -5.0}, "cam_threshold"), ({"adapter_hidden": 64.0}, "adapter_hidden")):
        torch.save({**whole, "config": {**whole["config"], **change}}, tmp_path / "changed.pt")
        round_id = call(api, "POST", "/rounds").json()["round"]
        response = call(api, "POST", f"/rounds/{round_id}/model", content=(tmp_path / "changed.pt").read_bytes())
        assert response.status_code == 422 and said in response.json()["detail"], response.json()
        assert store.rounds(round_id)[0].status == "failed" and not store.models()
        store.set_setting(RETRAIN_REQUESTED, 1.0, who="lead")  # the next round is due
    calibrated = {"cam_threshold": 0.3, "presence_threshold": 0.2, "image_view": False, "has_negatives": False}
    torch.save({**whole, "config": {**whole["config"], **calibrated}}, tmp_path / "calibrated.pt")
    round_id = call(api, "POST", "/rounds").json()["round"]
    response = call(api, "POST", f"/rounds/{round_id}/model", content=(tmp_path / "calibrated.pt").read_bytes())
    assert response.status_code == 200, response.json()  # what a round decides may differ


def test_a_stop_during_the_image_view_cancels_the_round_in_one_process_and_waits_under_torchrun(api, monkeypatch):
    """The view trains for minutes before the first progress report: one process answers a stop between its steps.
    Under torchrun rank 0 trains the view alone while the other ranks wait in a broadcast, so there the check
    must not raise (the stop is decided by every rank together at the next report)."""
    store = api["store"]
    trainer = RemoteTrainer(client(api), "micro_random", api["root"] / "trainer-cache", api["root"] / "mirror")
    checked = []

    def view_step(self, progress=None, stop_check=lambda: None):
        trainer.stop.set()  # SIGTERM during the view
        checked.append(True)
        stop_check()
        raise AssertionError("the view went on after a stop")

    monkeypatch.setattr(train_module.Trainer, "run", view_step)
    assert trainer.run(rounds=1, poll_s=0) == 0 and checked
    stopped = store.rounds()[-1]
    assert stopped.status == "cancelled" and "stopped" in stopped.error and not store.models()

    under_torchrun = RemoteTrainer(None, "micro_random", api["root"] / "trainer-cache", api["root"] / "mirror",
                                   ranks=Ranks(rank=0, world=2))
    under_torchrun.stop.set()
    under_torchrun._stop_check()  # no raise: rank 1 would be left waiting in the view's broadcast
