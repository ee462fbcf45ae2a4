"""The app's HTTP API through gradio_client (the same actions the canvas uses), and logins with --auth."""
from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path

import gradio_client
import gradio_client.exceptions
import httpx
import numpy as np
import pytest
from PIL import Image

from annotation import Store
from app_fixtures import Server, auth_server, launch_chromium, make_workspace, mask_png


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    srv = Server(make_workspace(root, n=14, n_val=2), root / "serve.log", "--no-trainer")
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server.url, verbose=False)


def decode(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def square(info, fraction: float = 0.25) -> np.ndarray:
    mask = np.zeros((info.height, info.width), bool)
    mask[: int(info.height * fraction * 2), : int(info.width * fraction * 2)] = True
    return mask


def test_the_loopback_server_answers_its_own_names_only(server):
    """`adasam serve` on 127.0.0.1 (the default) refuses a request for a rebound name (DNS rebinding), page and API
    alike, and answers as localhost or 127.0.0.1."""
    port = server.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert httpx.get(server.url + "/config", headers={"Host": host}).status_code == 200
    for path in ("/", "/config"):
        refused = httpx.get(server.url + path, headers={"Host": f"rebind.example:{port}"})
        assert refused.status_code == 403 and "not a loopback name" in refused.json()["detail"]


def test_task_has_pictures_and_counts(client):
    task = client.predict(api_name="/task")
    assert task["image_id"] is not None and task["annotator"].startswith("tester-")  # this client's own identity
    assert decode(task["image"]).shape[:2] == (task["height"], task["width"])
    assert decode(task["mask"]).shape == (task["height"], task["width"])
    assert task["cam"] is None and task["model"] == "pretrained"  # untrained backbone: no CAM, said so
    assert "Untrained backbone" in task["model_note"]
    assert not decode(task["mask"]).any() and task["box"] is None  # no whole-image mask to erase first
    assert task["probability"] is None and task["uncertainty"] is None  # untrained heads: no figure to show
    assert task["done"] + task["left"] == 12


def test_accept_drawn_mask_then_undo(client, server):
    task = client.predict(api_name="/task")
    with Store(server.workspace, create=False) as store:
        mask = square(store.image(task["image_id"]))
    after = client.predict(task["view"], mask_png(mask), api_name="/accept")
    assert after["image_id"] != task["image_id"]
    assert "saved your mask" in after["message"]  # before the first round nothing was proposed to correct
    with Store(server.workspace, create=False) as store:
        saved = store.latest_mask(task["image_id"])
        assert (saved.annotator, saved.origin) == (task["annotator"], "human")
        assert np.array_equal(store.load_mask(task["image_id"]), mask)
    back = client.predict(api_name="/undo")
    assert back["image_id"] == task["image_id"]
    with Store(server.workspace, create=False) as store:
        assert store.image(task["image_id"]).state == "unlabeled"


def test_undo_names_the_save_and_a_repeated_undo_withdraws_nothing_more(client, server):
    first = client.predict(api_name="/task")
    second = client.predict(first["view"], api_name="/no_finding")
    third = client.predict(second["view"], api_name="/no_finding")
    with Store(server.workspace, create=False) as store:
        assert third["last_save"]["image"] == store.image(second["image_id"]).name  # the save U would withdraw
    back = client.predict(third["last_save"]["id"], api_name="/undo")
    assert back["image_id"] == second["image_id"] and back["last_save"]["id"] == second["last_save"]["id"]
    with pytest.raises(gradio_client.exceptions.AppError, match="no longer your last"):
        client.predict(third["last_save"]["id"], api_name="/undo")  # replayed: the first no-finding stays
    with Store(server.workspace, create=False) as store:
        assert store.image(first["image_id"]).state == "no_finding"
        assert store.image(second["image_id"]).state == "unlabeled"
    with pytest.raises(gradio_client.exceptions.AppError, match="mask id"):
        client.predict("7", api_name="/undo")


def test_accept_unchanged_before_the_first_round_saves_the_annotators_mask(client, server):
    """Before the first round nothing is proposed: an accepted canvas is the annotator's own, not a prediction
    (export leaves predictions out unless asked; test_app_saves covers accepting a trained model's proposal)."""
    task = client.predict(api_name="/task")
    assert task["model"] == "pretrained"
    client.predict(task["view"], None, api_name="/accept")
    with Store(server.workspace, create=False) as store:
        saved = store.latest_mask(task["image_id"])
        assert (saved.origin, saved.model_version) == ("human", None)
        assert np.array_equal(store.load_mask(task["image_id"]), decode(task["mask"]) > 127)
        assert not [e for e in store.events(image_id=task["image_id"])  # no review of a proposal there was not
                    if e["what"] == "review" and e["details"]["mask_version"] == saved.version]


@pytest.fixture(scope="module")
def model(server):
    """The server's model rebuilt here (the same seeded micro backbone, the server's own cached embeddings)."""
    from app.model_slot import ModelSlot

    with Store(server.workspace, create=False) as store:
        yield ModelSlot(store, "micro_random", server.workspace.parent / "cache")


def test_refine_with_clicks_and_box(client, model):
    """The micro backbone's decoder is random, so "the mask covers the click" cannot be asked of it; what can be is
    that each answer is the model's mask for exactly these clicks (x, y; positive or negative) and this box."""
    task = client.predict(api_name="/task")
    w, h = task["width"], task["height"]
    embedding, geometry = model.embedding(task["image_id"])

    def refine(positive: list, negative: list, box: list) -> tuple[np.ndarray, np.ndarray]:
        """(the API's mask, the model's own) for one prompt."""
        answer = client.predict(task["view"], json.dumps(positive), json.dumps(negative), json.dumps(box),
                                api_name="/refine")
        mask = decode(answer["mask"]) > 127
        assert answer["image_id"] == task["image_id"] and answer["pixels"] == int(mask.sum())
        with model.lock:
            own = model.predictor.refine(embedding, geometry, [tuple(p) for p in positive],
                                         [tuple(p) for p in negative], tuple(box))
        return mask, own

    whole, inner = [0, 0, w, h], [w // 4, h // 4, 3 * w // 4, h // 2]
    a, b = [w // 2, h // 2], [w // 3, 2 * h // 3]
    prompts = {"centre": ([a], [], whole), "negative": ([a], [a], whole), "two": ([a], [b], inner),
               "swapped": ([b], [a], inner), "box": ([], [], inner)}
    masks = {}
    for name, prompt in prompts.items():
        masks[name], own = refine(*prompt)
        assert masks[name].shape == (h, w)
        wrong = int((masks[name] != own).sum())  # the same floats in both processes: 0 when measured; a few
        assert wrong <= 3, (name, wrong)  # pixels allowed for another summation order
    assert (masks["negative"] != masks["centre"]).any()  # the negative click reached the decoder
    assert int((masks["two"] != masks["swapped"]).sum()) > 10  # which click is negative shows (so the above can fail)
    with pytest.raises(gradio_client.exceptions.AppError, match="at most 64"):
        client.predict(task["view"], json.dumps([[1, 1]] * 5000), "[]", "null", api_name="/refine")


def test_tag_only_and_skip_move_on(client, server):
    task = client.predict(api_name="/task")
    with pytest.raises(gradio_client.exceptions.AppError, match="true or false"):
        client.predict(task["view"], "false", api_name="/tag")  # not stored as present
    tagged = client.predict(task["view"], True, api_name="/tag")
    assert tagged["image_id"] != task["image_id"]
    skipped = client.predict(tagged["view"], api_name="/skip")
    assert skipped["image_id"] not in (task["image_id"], tagged["image_id"])
    with Store(server.workspace, create=False) as store:
        assert store.tags(task["image_id"])[0]["present"] is True
        assert store.image(task["image_id"]).state == "unlabeled"


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools under NumPy 2
def test_dashboard_and_export(server, tmp_path):
    """Self-contained: a new annotator labels one image here, and the dashboard and the export must show it."""
    client = gradio_client.Client(server.url, verbose=False)
    before = client.predict(api_name="/dashboard")
    task = client.predict(api_name="/task")
    with Store(server.workspace, create=False) as store:
        mask = square(store.image(task["image_id"]), 0.2)
    client.predict(task["view"], mask_png(mask), api_name="/accept")
    data = client.predict(api_name="/dashboard")
    assert data["labels"]["images"] == 14 and data["validation"]["images"] is None
    mine = [row for row in data["annotators"] if row["annotator"] == task["annotator"]]
    assert len(mine) == 1 and (mine[0]["drawn"], mine[0]["total"]) == (1, 1)
    assert task["model"] == "pretrained"  # no proposal yet: the save is no review of one (effort counts proposals)
    assert data["effort"]["reviews"] == before["effort"]["reviews"]
    message = client.predict(api_name="/retrain_now")
    assert "trainer" in message
    with Store(server.workspace, create=False) as store:
        assert store.get_setting("retrain_requested")
    path, message = client.predict("coco", True, api_name="/export")  # downloaded by the client
    assert Path(path).is_file() and "Exported" in message
    with zipfile.ZipFile(path) as archive:
        coco = json.loads(archive.read(next(n for n in archive.namelist() if n.endswith("annotations.json"))))
    assert coco["annotations"] and all(a["image_id"] in {i["id"] for i in coco["images"]} for a in coco["annotations"])
    with Store(server.workspace, create=False) as store:  # every label (accepted predictions included), no other
        labeled = {image.id for image, _ in store.labeled(origins=("human", "imported", "no_finding",
                                                                   "accepted_prediction"))}
    assert {i["id"] for i in coco["images"]} == labeled
    from pycocotools import mask as mask_utils

    (mine,) = [a for a in coco["annotations"] if a["image_id"] == task["image_id"]]
    rle = {"size": mine["segmentation"]["size"], "counts": mine["segmentation"]["counts"].encode()}
    assert np.array_equal(mask_utils.decode(rle).astype(bool), mask) and mine["area"] == mask.sum()


def test_each_client_without_auth_is_its_own_annotator(server, client):
    other = gradio_client.Client(server.url, verbose=False)
    mine, theirs = client.predict(api_name="/task"), other.predict(api_name="/task")
    assert mine["annotator"] != theirs["annotator"] and mine["image_id"] != theirs["image_id"]
    with pytest.raises(gradio_client.exceptions.AppError, match="no longer on record"):
        other.predict(mine["view"], None, api_name="/accept")  # a showing answers only its own annotator
    with Store(server.workspace, create=False) as store:
        assert store.latest_mask(mine["image_id"]) is None


def test_auth_names_the_annotator(tmp_path):
    srv = auth_server(tmp_path)
    try:
        with pytest.raises(ValueError, match="Could not login"):
            gradio_client.Client(srv.url, verbose=False, auth=("alice", "wrong"))
        for name, password in (("alice", "wrong"), ("nobody", "s3cret")):  # the refusal itself, not a server error
            refused = httpx.post(f"{srv.url}/login", data={"username": name, "password": password})
            assert refused.status_code == 400 and refused.json() == {"detail": "Incorrect credentials."}, \
                (name, refused.status_code, refused.text[:200])
        alice = gradio_client.Client(srv.url, verbose=False, auth=("alice", "s3cret"))
        task = alice.predict(api_name="/task")
        assert task["annotator"] == "alice"
        alice.predict(task["view"], api_name="/no_finding")
        with Store(srv.workspace, create=False) as store:
            assert store.latest_mask(task["image_id"]).annotator == "alice"
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:  # the canvas resolves the login too
            browser = launch_chromium(playwright)
            page = browser.new_page()
            page.goto(srv.url)
            page.fill("input[type=text]", "bob")
            page.fill("input[type=password]", "hunter22")
            page.keyboard.press("Enter")
            page.wait_for_selector("[data-image-id]:not([data-image-id=''])", timeout=30_000)
            assert "you are bob" in page.inner_text(".ann-counts")
            before = page.get_attribute("[data-drawn]", "data-drawn")
            shown = int(page.get_attribute("[data-image-id]", "data-image-id"))
            page.keyboard.press("f")
            page.wait_for_function(f"document.querySelector('[data-drawn]').dataset.drawn !== '{before}'")
            browser.close()
        with Store(srv.workspace, create=False) as store:
            assert store.latest_mask(shown).annotator == "bob"
    finally:
        assert srv.stop() == 0
