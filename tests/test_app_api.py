"""The app's HTTP API through gradio_client (the same actions the canvas uses), and logins with --auth."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from annotation import Store
from app.auth import write_user
from app_fixtures import Server, launch_chromium, make_workspace, mask_png

gradio_client = pytest.importorskip("gradio_client")


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


def test_task_has_pictures_and_counts(client):
    task = client.predict(api_name="/task")
    assert task["image_id"] is not None and task["annotator"] == "tester"
    assert decode(task["image"]).shape[:2] == (task["height"], task["width"])
    assert decode(task["mask"]).shape == (task["height"], task["width"])
    assert task["cam"] is None and task["model"] == "pretrained"  # untrained backbone: no CAM, said so
    assert "Untrained backbone" in task["model_note"]
    assert task["done"] + task["left"] == 12


def test_accept_drawn_mask_then_undo(client, server):
    task = client.predict(api_name="/task")
    with Store(server.workspace, create=False) as store:
        mask = square(store.image(task["image_id"]))
    after = client.predict(task["image_id"], mask_png(mask), api_name="/accept")
    assert after["image_id"] != task["image_id"] and "corrected" in after["message"]
    with Store(server.workspace, create=False) as store:
        saved = store.latest_mask(task["image_id"])
        assert (saved.annotator, saved.origin) == ("tester", "human")
        assert np.array_equal(store.load_mask(task["image_id"]), mask)
    back = client.predict(api_name="/undo")
    assert back["image_id"] == task["image_id"]
    with Store(server.workspace, create=False) as store:
        assert store.image(task["image_id"]).state == "unlabeled"


def test_accept_unchanged_records_the_prediction(client, server):
    task = client.predict(api_name="/task")
    client.predict(task["image_id"], None, api_name="/accept")
    with Store(server.workspace, create=False) as store:
        saved = store.latest_mask(task["image_id"])
        assert saved.origin == "accepted_prediction" and saved.model_version is None  # pretrained: unregistered
        assert np.array_equal(store.load_mask(task["image_id"]), decode(task["mask"]) > 127)
        review = [e for e in store.events(image_id=task["image_id"]) if e["what"] == "review"]
        assert review[0]["details"]["dice_shown_saved"] == 1.0


def test_refine_with_clicks_and_box(client):
    task = client.predict(api_name="/task")
    w, h = task["width"], task["height"]
    result = client.predict(task["image_id"], f"[[{w // 3}, {h // 3}]]", f"[[{w - 5}, {h - 5}]]",
                            f"[0, 0, {w}, {h}]", api_name="/refine")
    assert decode(result["mask"]).shape == (h, w) and result["ms"] < 5000


def test_tag_only_and_skip_move_on(client, server):
    task = client.predict(api_name="/task")
    tagged = client.predict(task["image_id"], True, api_name="/tag")
    assert tagged["image_id"] != task["image_id"]
    skipped = client.predict(tagged["image_id"], api_name="/skip")
    assert skipped["image_id"] not in (task["image_id"], tagged["image_id"])
    with Store(server.workspace, create=False) as store:
        assert store.tags(task["image_id"])[0]["present"] is True
        assert store.image(task["image_id"]).state == "unlabeled"


def test_dashboard_and_export(client, server, tmp_path):
    data = client.predict(api_name="/dashboard")
    assert data["labels"]["images"] == 14 and data["validation"]["images"] is None
    assert any(row["annotator"] == "tester" for row in data["annotators"])
    assert data["effort"]["reviews"] >= 1
    message = client.predict(api_name="/retrain_now")
    assert "trainer" in message
    with Store(server.workspace, create=False) as store:
        assert store.get_setting("retrain_requested")
    path = client.predict("png", True, api_name="/export")
    import zipfile

    with zipfile.ZipFile(path) as archive:
        assert any(name.endswith("manifest.csv") for name in archive.namelist())


def test_auth_names_the_annotator(tmp_path):
    users = tmp_path / "users.txt"
    write_user(users, "alice", "s3cret")
    write_user(users, "bob", "hunter22")
    srv = Server(make_workspace(tmp_path, n=8, n_val=2), tmp_path / "serve.log", "--no-trainer", "--auth", str(users))
    try:
        with pytest.raises(Exception):
            gradio_client.Client(srv.url, verbose=False, auth=("alice", "wrong"))
        alice = gradio_client.Client(srv.url, verbose=False, auth=("alice", "s3cret"))
        task = alice.predict(api_name="/task")
        assert task["annotator"] == "alice"
        alice.predict(task["image_id"], api_name="/no_finding")
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
