"""The web app in headless Chromium against a real server: annotate (paint, accept, no finding, skip, undo, point
clicks), a background training round showing up on the dashboard, and an export download."""
from __future__ import annotations

import base64
import io
import json
import re
import time
import zipfile

import numpy as np
import pytest
from playwright import sync_api as playwright_api
from PIL import Image

from annotation import Store
from app_fixtures import Server, launch_chromium, make_workspace, mask_png, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    workspace = make_workspace(root)
    srv = Server(workspace, root / "serve.log", "--round-every", "3", "--train-steps", "8",
                 "--no-image-view")  # a fresh view trains 1500 steps at least: rounds with it are test_app_trainer's
    yield srv
    assert srv.stop() == 0, (root / "serve.log").read_text()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(server, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    page = context.new_page()
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server.url, "data:", "blob:"))
            else None)
    page.goto(server.url)
    page.wait_for_selector("[data-image-id]:not([data-image-id=''])", timeout=30_000)
    yield page
    context.close()
    assert not outside, f"the page reached outside the server: {outside[:3]}"


def drawn(page) -> int:
    return int(page.get_attribute("[data-drawn]", "data-drawn") or 0)


def image_id(page) -> int:
    return int(page.get_attribute("[data-image-id]", "data-image-id"))


def act(page, press=None, click=None) -> None:
    """Press a key or click a button, then wait until the next task is drawn."""
    before = drawn(page)
    if press:
        page.keyboard.press(press)
    else:
        page.click(click)
    page.wait_for_function(f"Number(document.querySelector('[data-drawn]').dataset.drawn) > {before}")


def me(page) -> str:
    """The annotator name the server gave this browser."""
    return page.get_attribute("[data-annotator]", "data-annotator") or ""


def canvas_box(page) -> dict:
    return page.locator("canvas.ann-canvas").bounding_box()


def mask_pixels(page) -> int:
    return int(page.inner_text(".ann-pixels"))


def test_page_shows_image_with_overlay(page, server):
    assert "phantom_" in page.inner_text(".ann-title")
    assert f"you are {me(page)}" in page.inner_text(".ann-counts")
    assert me(page).startswith("tester-")  # without --auth each browser is its own annotator
    assert "Untrained backbone" in page.inner_text(".ann-model")  # said plainly before the first round
    assert "Test phantoms." in page.inner_text("#workspace-note")
    assert colours(page)["green"] == 0  # before the first round: no whole-image mask to erase first ...
    assert "active" in page.get_attribute("button[data-tool=box]", "class")  # ... the box tool is ready instead
    box = canvas_box(page)
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.25)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.75, steps=4)
    page.mouse.up()
    page.wait_for_function("Number(document.querySelector('[data-drawn]').dataset.refined || 0) >= 1")
    shown = colours(page)
    assert shown["green"] > 100, shown  # the mask SAM drew in the box, outlined
    assert shown["grey"] > 100, shown  # the image itself, uncovered somewhere
    assert shown["width"] >= 400, shown  # small images are shown large


def colours(page) -> dict:
    """Green (mask outline) and grey (image) canvas pixels."""
    return page.evaluate("""() => {
        const c = document.querySelector('canvas.ann-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let green = 0, grey = 0;
        for (let i = 0; i < d.length; i += 4) {
            if (d[i + 1] > 200 && d[i] < 120 && d[i + 2] < 120) green++;
            else if (Math.abs(d[i] - d[i + 1]) < 8 && Math.abs(d[i + 1] - d[i + 2]) < 8) grey++;
        }
        return {green, grey, width: c.getBoundingClientRect().width};
    }""")


def test_paint_and_accept_saves_the_mask_with_the_user(page, server):
    page.keyboard.press("e")  # eraser: clear a band, then paint a blob with the brush
    box = canvas_box(page)
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 5, cy)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 5, cy, steps=8)
    page.mouse.up()
    page.keyboard.press("b")
    page.mouse.move(cx - 30, cy - 30)
    page.mouse.down()
    page.mouse.move(cx + 30, cy + 30, steps=6)
    page.mouse.up()
    assert "(edited)" in page.inner_text(".ann-facts")
    shown = image_id(page)
    act(page, click="button[data-act=accept]")
    assert image_id(page) != shown
    with Store(server.workspace, create=False) as store:
        saved = store.latest_mask(shown)
        assert saved.annotator == me(page) and saved.origin == "human"
        mask = store.load_mask(shown)
        h, w = mask.shape
        assert mask[h // 2, w // 2] and mask.any()
        reviews = [e for e in store.events(image_id=shown, limit=5) if e["what"] == "review"]
        if saved.model_version is None:  # shown before the first round (it trains beside): no proposal to review
            assert reviews == []
        else:
            assert reviews and reviews[0]["details"]["dice_shown_saved"] < 1


def test_no_finding_skip_and_undo_by_keyboard(page, server):
    first = image_id(page)
    act(page, press="f")
    second = image_id(page)
    with Store(server.workspace, create=False) as store:
        assert store.image(first).state == "no_finding"
        assert store.latest_mask(first).annotator == me(page)
    act(page, press="s")
    assert image_id(page) != second
    with Store(server.workspace, create=False) as store:
        assert any(e["what"] == "skip" for e in store.events(image_id=second, limit=5))
        first_name = store.image(first).name
    assert first_name in page.get_attribute('[data-act="undo"]', "title")  # the button names what U withdraws
    act(page, press="u")  # undo the no-finding: that image comes back
    assert image_id(page) == first
    assert "undid" in page.inner_text(".ann-message")
    with Store(server.workspace, create=False) as store:
        assert store.image(first).state == "unlabeled"


def test_undo_asks_before_it_drops_unsaved_edits(page, server):
    act(page, press="f")  # a save to undo
    shown = image_id(page)
    box = canvas_box(page)
    page.keyboard.press("b")
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 20, box["y"] + box["height"] / 2 + 20, steps=4)
    page.mouse.up()
    assert "(edited)" in page.inner_text(".ann-facts")
    asked = []
    page.once("dialog", lambda dialog: asked.append(dialog.message) or dialog.dismiss())
    page.keyboard.press("u")
    page.wait_for_timeout(300)
    assert asked and "unsaved edits" in asked[0]
    assert image_id(page) == shown and "(edited)" in page.inner_text(".ann-facts")  # kept, nothing undone
    for key in "fst":  # no finding, skip and tag would drop the drawing too: they ask as well
        asked.clear()
        page.once("dialog", lambda dialog: asked.append(dialog.message) or dialog.dismiss())
        page.keyboard.press(key)
        page.wait_for_timeout(300)
        assert asked and "unsaved drawing" in asked[0], key
        assert image_id(page) == shown and "(edited)" in page.inner_text(".ann-facts")
    page.once("dialog", lambda dialog: dialog.accept())
    act(page, press="u")
    assert image_id(page) != shown and "undid" in page.inner_text(".ann-message")


def test_a_minute_of_brush_strokes_keeps_the_lease(page, server):
    """Strokes are local until the save; after a minute of them the page tells the server the annotator is still
    there, and the lease runs ten minutes from then."""
    shown = image_id(page)
    box = canvas_box(page)
    page.keyboard.press("b")
    page.evaluate("() => { window.realNow = Date.now; Date.now = () => window.realNow() + 120000; }")  # 2 min on
    with page.expect_response(lambda r: r.url.endswith("/component_server/")
                              and '"fn_name":"keep"' in (r.request.post_data or "")) as answer:
        page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 3)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=4)
        page.mouse.up()
    assert answer.value.json() == {"kept": True}
    page.evaluate("() => { Date.now = window.realNow; }")
    with Store(server.workspace, create=False) as store:
        lease = store.conn.execute("SELECT annotator, expires_at FROM leases WHERE image_id = ?", (shown,)).fetchone()
    assert lease["annotator"] == me(page) and lease["expires_at"] > time.time() + 500


def _is_refine(response) -> bool:
    return response.url.endswith("/component_server/") and '"fn_name":"refine"' in (response.request.post_data or "")


def _click(page, fx: float, fy: float) -> tuple[dict, dict]:
    """Click the canvas at a fraction of its size -> (what the page sent to refine, what the server answered)."""
    box = canvas_box(page)
    with page.expect_response(_is_refine) as answer:
        page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
    return json.loads(answer.value.request.post_data)["data"], answer.value.json()


def _near(points: list, expected: list) -> bool:
    """Click lists equal to within the rounding of canvas to image pixels."""
    return len(points) == len(expected) and all(abs(a - b) <= 1 for p, e in zip(points, expected) for a, b in zip(p, e))


def test_point_click_redraws_the_mask(page):
    """Each click reaches the decoder as what it is (positive or negative, at the clicked image pixel), and the page
    shows the server's answer. The micro backbone's decoder is random, so the direction of a negative click's
    change cannot be asked of it; that the mask changes, and how exactly, is checked in test_app_api."""
    before = mask_pixels(page)
    w, h = (int(v) for v in re.search(r"(\d+)×(\d+)\)", page.inner_text(".ann-title")).groups())
    page.keyboard.press("p")
    sent, positive = _click(page, 0.3, 0.4)
    page.wait_for_function("Number(document.querySelector('[data-drawn]').dataset.refined || 0) >= 1")
    assert "SAM redrew the mask" in page.inner_text(".ann-message")
    assert _near(sent["positive"], [[0.3 * w, 0.4 * h]]) and sent["negative"] == []
    assert mask_pixels(page) == positive["pixels"]
    page.keyboard.press("n")
    sent, negative = _click(page, 0.8, 0.7)
    page.wait_for_function("Number(document.querySelector('[data-drawn]').dataset.refined || 0) >= 2")
    assert _near(sent["positive"], [[0.3 * w, 0.4 * h]]) and _near(sent["negative"], [[0.8 * w, 0.7 * h]])
    assert sent["box"] == positive["box"] is None  # no proposal, and this decoder takes clicks as points: no box
    assert "Prompt box —" in page.inner_text(".ann-facts")  # is started for them (LiteMedSAM's is: test_app_saves)
    assert mask_pixels(page) == negative["pixels"]  # the page shows the answer to both clicks ...
    changed = int((pixels_of(negative["mask"]) != pixels_of(positive["mask"])).sum())
    assert changed > 0  # ... and the negative click changed it
    box = canvas_box(page)
    page.keyboard.press("x")  # drag a box: SAM redraws inside it
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    with page.expect_response(_is_refine) as answer:
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.7, steps=4)
        page.mouse.up()
    page.wait_for_function("Number(document.querySelector('[data-drawn]').dataset.refined || 0) >= 3")
    dragged = answer.value.json()
    assert _near([dragged["box"][:2], dragged["box"][2:]], [[0.2 * w, 0.2 * h], [0.6 * w, 0.7 * h]])
    shown = re.search(r"Prompt box (-?\d+), (-?\d+), (-?\d+), (-?\d+)", page.inner_text(".ann-facts")).groups()
    assert all(abs(int(a) - b) <= 0.5 for a, b in zip(shown, dragged["box"]))  # the box SAM was given, shown
    page.keyboard.press("Control+z")  # the last edit is undone locally
    page.keyboard.press("r")  # back to the model's proposal
    assert mask_pixels(page) == before and "(edited)" not in page.inner_text(".ann-facts")


def test_round_runs_and_dashboard_shows_it(page, server):
    with Store(server.workspace, create=False) as store:  # make sure a round is due: three labels, one a lesion
        accepted = [_api_accept(store, server) for _ in range(3)]
    with Store(server.workspace, create=False) as store:  # saved as drawn, by whoever drew them
        for task, mask, following in accepted:
            saved = store.latest_mask(task["image_id"])
            assert (saved.annotator, saved.origin) == (task["annotator"], "human")
            assert np.array_equal(store.load_mask(task["image_id"]), mask)
            assert following["annotator"] == task["annotator"] and following["image_id"] != task["image_id"]
    task = accepted[-1][0]
    with Store(server.workspace, create=False) as store:
        done = wait_for(lambda: [r for r in store.rounds() if r.status == "done"], timeout=120,
                        what="a finished training round")
        assert done[0].model_version and store.latest_model() is not None
    page.click("button[role=tab]:has-text('Dashboard')")
    page.click("#dash-refresh")
    page.wait_for_selector("#dice-curve circle.point", timeout=20_000)
    assert page.locator("#dice-curve circle.point").count() >= 1
    text = page.inner_text("#dash-figures")
    assert "Presence AUC" in text and "Effort saved" in text and "Validation set" in text
    assert "4 images imported with split 'val'" in text
    assert task["annotator"].startswith("tester-") and task["annotator"] in page.inner_text("#annotators")
    page.click("button[role=tab]:has-text('Annotate')")
    act(page, press="s")  # the next request swaps the new model in
    assert page.inner_text(".ann-model").startswith("Model r0")


def _api_accept(store: Store, server: Server) -> tuple[dict, np.ndarray, dict]:
    """Label a new annotator's current image with a square lesion through the HTTP API -> (the task labeled, its
    mask, the task handed out next)."""
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    task = client.predict(api_name="/task")
    info = store.image(task["image_id"])
    mask = np.zeros((info.height, info.width), bool)
    mask[info.height // 4: info.height // 2, info.width // 4: info.width // 2] = True
    return task, mask, client.predict(task["view"], mask_png(mask), api_name="/accept")


def pixels_of(data_url: str) -> np.ndarray:
    """A mask the server sent (PNG data URL) as booleans."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))) > 127


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools under NumPy 2
def test_export_downloads_a_valid_zip(page, server, tmp_path):
    """The COCO file in the zip holds every labeled image and each mask as saved; one labeled here is checked
    pixel for pixel (the export includes masks accepted unchanged, the tab's default)."""
    from pycocotools import mask as mask_utils

    with Store(server.workspace, create=False) as store:
        task, mask, _ = _api_accept(store, server)
    page.click("button[role=tab]:has-text('Export')")
    page.click("#export-format label:has-text('coco')")
    page.click("#export-button")
    link = page.locator("#export-file a").first
    link.wait_for(timeout=30_000)
    with page.expect_download() as download:
        link.click()
    path = tmp_path / "export.zip"
    download.value.save_as(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert any(n.endswith("manifest.csv") for n in names) and any(n.endswith("provenance.json") for n in names)
        (coco_name,) = [n for n in names if n.endswith("/annotations.json")]
        coco = json.loads(archive.read(coco_name))
    with Store(server.workspace, create=False) as store:
        labeled = store.labeled(origins=("human", "imported", "no_finding", "accepted_prediction"))
        saved = {image.id: store.read_mask(image, info) for image, info in labeled}
        assert {(i["id"], i["width"], i["height"]) for i in coco["images"]} == \
            {(image.id, image.width, image.height) for image, _ in labeled}
    assert coco["categories"] == [{"id": 1, "name": "lesion", "supercategory": "lesion"}]
    decoded = {}
    for a in coco["annotations"]:
        assert a["image_id"] not in decoded and a["category_id"] == 1
        rle = {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
        decoded[a["image_id"]] = mask_utils.decode(rle).astype(bool)
    assert set(decoded) == {i for i, m in saved.items() if m.any()}  # no finding: no annotation
    assert all(np.array_equal(decoded[i], saved[i]) for i in decoded)
    assert np.array_equal(decoded[task["image_id"]], mask)


def test_brush_lands_on_the_right_pixels_when_zoomed_and_panned(page, server):
    box = canvas_box(page)
    page.evaluate("document.querySelector('.ann-brush').value = '60'")
    page.keyboard.press("e")  # wipe the proposal: eraser sweeps at full size, whole image in view
    for row in range(1, int(box["height"]) + 30, 30):
        page.mouse.move(box["x"] + 1, box["y"] + min(row, box["height"] - 1))  # pressed on the canvas, then
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] + 5, box["y"] + row, steps=6)  # dragged past its edge
        page.mouse.up()
    assert mask_pixels(page) == 0
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    for _ in range(4):
        page.mouse.wheel(0, -100)  # zoom in 1.25x per notch around the canvas centre
    page.wait_for_function("Number(document.querySelector('[data-zoom]').dataset.zoom) > 2.4")
    zoom = 1.25 ** 4
    page.mouse.move(cx, cy)
    page.mouse.down(button="right")  # pan: drag the image 40 screen pixels right
    page.mouse.move(cx + 40, cy, steps=4)
    page.mouse.up(button="right")
    page.evaluate("document.querySelector('.ann-brush').value = '4'")
    page.keyboard.press("b")
    fx, fy = 0.3, 0.6  # a dot here on screen
    page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
    page.keyboard.press("0")  # back to the whole image
    page.wait_for_function("document.querySelector('[data-zoom]').dataset.zoom === '1.0000'")
    shown = image_id(page)
    act(page, click="button[data-act=accept]")
    with Store(server.workspace, create=False) as store:
        mask = store.load_mask(shown)
    h, w = mask.shape
    # independently of the page's code: zoomed about the centre, then panned 40 px (in image pixels: 40 * w / width
    # / zoom) to the left edge's side, so the screen point shows this image point
    x = w / 2 + (fx - 0.5) * w / zoom - 40 * w / box["width"] / zoom
    y = h / 2 + (fy - 0.5) * h / zoom
    ys, xs = np.nonzero(mask)
    assert len(xs) and abs(xs.mean() - x) < 1.5 and abs(ys.mean() - y) < 1.5, (xs.mean(), ys.mean(), x, y)


def test_window_sliders_rerender_the_image_and_w_restores_its_own(page):
    own = page.get_attribute("[data-window]", "data-window")
    mean = "(() => { const c = document.querySelector('canvas.ann-canvas'); const d = c.getContext('2d')" \
           ".getImageData(0, 0, c.width, c.height).data; let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i];" \
           " return s / (d.length / 4); })()"
    page.keyboard.press("c")  # CAM off and mask off: the canvas shows the image alone
    page.keyboard.press("m")
    before = page.evaluate(mean)
    page.evaluate("""() => {
        const level = document.querySelector('.ann-level');
        level.value = String(Number(level.min) + 0.9 * (Number(level.max) - Number(level.min)));  // darker
        level.dispatchEvent(new Event('input', { bubbles: true }));
    }""")
    page.wait_for_function(f"document.querySelector('[data-window]').dataset.window !== '{own}'")
    page.wait_for_timeout(300)
    assert page.evaluate(mean) < before - 10
    page.keyboard.press("w")
    page.wait_for_function(f"document.querySelector('[data-window]').dataset.window === '{own}'")


def test_page_down_saves_the_slice_and_its_mask_prompts_the_next(browser, tmp_path):
    from annotation import import_sources, take
    from annotation_fixtures import write_nifti

    volume = np.random.default_rng(0).integers(0, 60, (72, 60, 4)).astype(np.int16)  # distinct slices (equal
    volume[20:40, 15:35, :] += 300  # pixels are stored once); x, y, slice: a bright square on every slice
    write_nifti(tmp_path / "src" / "scan.nii.gz", volume)
    with Store(tmp_path / "workspace") as store:
        import_sources(store, [tmp_path / "src"], with_masks=False, progress=False)
        slices = {info.slice_index: info.id for info in store.images()}
    server = Server(tmp_path / "workspace", tmp_path / "serve.log", "--no-trainer")
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        page = context.new_page()
        page.goto(server.url)
        page.wait_for_selector("[data-image-id]:not([data-image-id=''])", timeout=30_000)
        with Store(server.workspace, create=False) as store:
            assert take(store, me(page), slices[1])  # this annotator on slice 1, whatever the queue's order
        page.reload()
        page.wait_for_selector(f"[data-image-id='{slices[1]}']", timeout=30_000)
        assert mask_pixels(page) == 0  # untrained: no proposal
        box = canvas_box(page)
        page.keyboard.press("b")  # paint a blob on slice 1
        page.mouse.move(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.45)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5, steps=4)
        page.mouse.up()
        refined = "Number(document.querySelector('[data-image-id]').dataset.refined || 0)"
        before = page.evaluate(refined)
        page.keyboard.press("PageDown")  # saves slice 1, shows slice 2 prompted by slice 1's box
        page.wait_for_selector(f"[data-image-id='{slices[2]}']", timeout=30_000)
        page.wait_for_function(f"{refined} > {before}")
        assert "previous slice's box prompted" in page.inner_text(".ann-message")
        with Store(server.workspace, create=False) as store:
            assert store.image(slices[1]).state == "masked" and store.load_mask(slices[1]).any()
        page.keyboard.press("r")  # back to the (empty) proposal: nothing to save
        before = drawn(page)
        page.keyboard.press("PageDown")  # moves on without saving slice 2
        page.wait_for_function(f"Number(document.querySelector('[data-drawn]').dataset.drawn) > {before}")
        assert image_id(page) == slices[3]
        with Store(server.workspace, create=False) as store:
            assert store.image(slices[2]).state == "unlabeled"
        context.close()
    finally:
        assert server.stop() == 0, (tmp_path / "serve.log").read_text()
