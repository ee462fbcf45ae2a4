"""What an annotator saves is what they saw (issue 9): every save answers one showing, only its annotator may use it,
a save never overwrites someone else's work unseen, and bad or oversized input is refused before anything changes.
In-process Studio over micro_random phantoms: milliseconds per model call."""
from __future__ import annotations

import base64
import dataclasses
import io
import time

import numpy as np
import pytest
from PIL import Image

from annotation import SaveRefused, Store
from app import studio as studio_module
from app.errors import RequestError, StaleView
from app.model_slot import ModelSlot
from app.pictures import decode_mask
from app.studio import Studio
from app.trainer import BackgroundTrainer
from model.inference import CLICK_BOX_PAD
from app_fixtures import make_workspace, mask_png


@pytest.fixture
def setup(tmp_path):
    workspace = make_workspace(tmp_path, n=12, n_val=3)
    store = Store(workspace)
    studio = Studio(store, ModelSlot(store, "micro_random", tmp_path / "cache"))
    yield workspace, store, studio
    studio.close()
    store.close()


def shown_mask(task: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(task["mask"].split(",", 1)[1])))) > 127


def square(store: Store, image_id: int) -> np.ndarray:
    info = store.image(image_id)
    mask = np.zeros((info.height, info.width), bool)
    mask[5:30, 10:40] = True
    return mask


def expire_leases(store: Store) -> None:
    with store.transaction() as conn:
        conn.execute("UPDATE leases SET expires_at = 0")


def test_accept_unchanged_saves_the_mask_shown_after_a_new_model_and_an_emptied_cache(setup, tmp_path):
    workspace, store, studio = setup
    task = studio.task("ann")
    trainer = BackgroundTrainer(workspace, "micro_random", tmp_path / "cache", round_every=3, steps=4)
    for image_id in [i.id for i in store.images(split="pool", state="unlabeled") if i.id != task["image_id"]][:3]:
        store.save_mask(image_id, square(store, image_id), "other")
    trainer.train_round()
    trainer.store.close()
    studio._views.clear()  # what 20 annotators' prefetching did to the 32-entry cache
    assert not np.array_equal(studio.view(task["image_id"]).mask, shown_mask(task))  # the new model differs
    after = studio.accept("ann", task["view"])
    saved = store.latest_mask(task["image_id"])
    assert np.array_equal(store.load_mask(task["image_id"]), shown_mask(task))
    # shown before the first round, which proposes nothing: the mask is the annotator's, not a model's
    assert "saved your mask" in after["message"] and (saved.origin, saved.model_version) == ("human", None)
    assert not [e for e in store.events(image_id=task["image_id"]) if e["what"] == "review"]
    assert after["model"] == "r0001"  # the next image is the trained model's proposal: accepted, it is that
    accepted = studio.accept("ann", after["view"])
    assert "accepted as proposed" in accepted["message"]
    saved = store.latest_mask(after["image_id"])
    assert (saved.origin, saved.model_version) == ("accepted_prediction", "r0001")
    assert np.array_equal(store.load_mask(after["image_id"]), shown_mask(after))
    review = [e for e in store.events(image_id=after["image_id"]) if e["what"] == "review"]
    assert review[0]["details"]["dice_shown_saved"] == 1.0


def test_a_view_answers_only_its_annotator_and_only_once(setup):
    _, store, studio = setup
    task = studio.task("ann")
    with pytest.raises(StaleView):
        studio.accept("intruder", task["view"])  # another annotator cannot use it
    with pytest.raises(StaleView):
        studio.no_finding("ann", "never-handed-out")
    assert store.latest_mask(task["image_id"]) is None
    studio.accept("ann", task["view"], mask_png(square(store, task["image_id"])))
    with pytest.raises(StaleView):  # a replayed save finds nothing
        studio.accept("ann", task["view"])
    assert [m.version for m in store.mask_history(task["image_id"])] == [1]


def test_a_save_while_someone_else_holds_the_image_is_refused(setup):
    _, store, studio = setup
    first = studio.task("ann")
    expire_leases(store)
    second = studio.task("bob")  # the expired lease is handed on
    assert second["image_id"] == first["image_id"]
    with pytest.raises(SaveRefused, match="being labeled by bob"):
        studio.accept("ann", first["view"], mask_png(square(store, first["image_id"])))
    assert store.latest_mask(first["image_id"]) is None
    studio.accept("ann", studio.task("ann")["view"])  # the refused showing was not spent by a refusal
    with pytest.raises(SaveRefused):
        studio.no_finding("ann", first["view"])


def test_a_later_conflicting_save_keeps_both_masks_and_shows_the_conflict(setup):
    _, store, studio = setup
    first = studio.task("ann")
    expire_leases(store)
    second = studio.task("bob")
    bob_mask = square(store, second["image_id"])
    studio.accept("bob", second["view"], mask_png(bob_mask))
    with pytest.raises(SaveRefused, match="saved by bob"):  # an unchanged proposal never replaces work unseen
        studio.accept("ann", first["view"])
    assert store.latest_mask(first["image_id"]).annotator == "bob"
    ann_mask = np.zeros_like(bob_mask)
    ann_mask[40:60, 40:70] = True  # a human decision is kept as a new version that names the one it did not see
    result = studio.accept("ann", first["view"], mask_png(ann_mask))
    assert "bob saved this image meanwhile (version 1)" in result["message"]
    history = store.mask_history(first["image_id"])
    assert [(m.annotator, m.origin, m.conflict_with) for m in history] == [("bob", "human", None),
                                                                           ("ann", "human", 1)]
    assert np.array_equal(store.read_mask(store.image(first["image_id"]), history[0]), bob_mask)
    assert np.array_equal(store.load_mask(first["image_id"]), ann_mask)
    assert studio.dashboard()["conflicts"] == [{"image_id": first["image_id"], "version": 2, "annotator": "ann",
                                                "name": store.image(first["image_id"]).name, "over_version": 1}]


def test_refine_checks_its_input_before_it_leases(setup):
    _, store, studio = setup
    task = studio.task("ann")
    w, h = task["width"], task["height"]
    with pytest.raises(RequestError, match="at most 64"):
        studio.refine("ann", task["view"], [[1, 1]] * 5000, [])
    for bad in ([[w + 50, 1]], [[1]], [["1", 2]], [[float("nan"), 1]], "[[1, 1]]"):
        with pytest.raises(RequestError):
            studio.refine("ann", task["view"], bad, [])
    with pytest.raises(RequestError, match="box"):
        studio.refine("ann", task["view"], [[1, 1]], [], [0, 0, w])
    expire_leases(store)
    other = studio.task("bob")
    assert other["image_id"] == task["image_id"]
    with pytest.raises(StaleView):  # bob's showing is bob's
        studio.refine("ann", other["view"], [[1, 1]], [])
    with pytest.raises(SaveRefused):  # ann's old showing cannot take bob's lease
        studio.refine("ann", task["view"], [[1, 1]], [])
    lease = store.conn.execute("SELECT annotator FROM leases WHERE image_id = ?", (task["image_id"],)).fetchone()
    assert lease["annotator"] == "bob"
    done = studio.refine("bob", other["view"], [[w // 2, h // 2]], [[1, 1]], [0, 0, w, h])
    assert done["image_id"] == task["image_id"] and shown_mask(done).shape == (h, w)


def test_keep_renews_the_lease_of_someone_still_editing_and_refuses_a_lost_one(setup, monkeypatch):
    """Brush strokes reach the server only with the save: the canvas says it is still there with `keep`."""
    _, store, studio = setup
    task = studio.task("ann")

    def expires() -> float:
        return store.conn.execute("SELECT expires_at FROM leases WHERE image_id = ?",
                                  (task["image_id"],)).fetchone()["expires_at"]

    with store.transaction() as conn:
        conn.execute("UPDATE leases SET expires_at = ?", (time.time() + 5,))  # about to run out
    assert studio.keep("ann", task["view"]) == {"kept": True}
    assert expires() > time.time() + 500  # ten minutes again
    expire_leases(store)
    other = studio.task("bob")
    assert other["image_id"] == task["image_id"]
    monkeypatch.setattr("app.studio.RENEW_EVERY_S", 0.0)  # not within the last renewal's 30 s
    with pytest.raises(SaveRefused, match="someone else"):
        studio.keep("ann", task["view"])
    with pytest.raises(StaleView):
        studio.keep("ann", other["view"])  # bob's showing is bob's


def test_refine_click_limit_is_configurable(setup):
    _, store, studio = setup
    studio.max_points = 3
    task = studio.task("ann")
    studio.refine("ann", task["view"], [[1, 1], [2, 2]], [[3, 3]])
    with pytest.raises(RequestError, match="at most 3"):
        studio.refine("ann", task["view"], [[1, 1], [2, 2]], [[3, 3], [4, 4]])


def test_tag_takes_a_real_boolean(setup):
    _, store, studio = setup
    task = studio.task("ann")
    with pytest.raises(RequestError, match="true or false"):
        studio.tag_only("ann", task["view"], "false")
    assert store.tags(task["image_id"]) == []
    studio.tag_only("ann", task["view"], False)
    assert store.tags(task["image_id"])[0]["present"] is False


def test_mask_size_is_checked_from_the_header_before_decoding(monkeypatch, tmp_path):
    buffer = io.BytesIO()
    Image.new("1", (13000, 13000)).save(buffer, format="PNG")  # a few KB that decode to 0.7 GB of RGBA
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert len(url) < 100_000

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels decoded before the size was checked")

    monkeypatch.setattr(Image.Image, "convert", no_decoding)
    with pytest.raises(RequestError, match="13000x13000"):
        decode_mask(url, (64, 80))
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")  # past Pillow's own bomb limit
    with pytest.raises(RequestError, match="claims over"):
        decode_mask("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(), (64, 80))
    for bad in ("not a data url", "data:image/png;base64,!!!", "data:image/png;base64," + base64.b64encode(
            b"GIF89a....").decode(), None):
        with pytest.raises(RequestError):
            decode_mask(bad, (64, 80))


def _url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_a_grey_label_png_counts_every_non_zero_pixel_and_a_canvas_png_its_bright_opaque_ones():
    """A 0/1 label image (what a script would send) is not read as empty; the canvas's anti-aliased edge is cut."""
    labels = np.zeros((64, 80), np.uint8)
    labels[10:20, 30:40] = 1
    for mode in ("L", "1"):
        assert np.array_equal(decode_mask(_url(Image.fromarray(labels * (255 if mode == "1" else 1)).convert(mode)),
                                          (64, 80)), labels > 0)
    canvas = np.zeros((64, 80, 4), np.uint8)
    canvas[10:20, 30:40] = (255, 255, 255, 255)
    canvas[20, 30:40] = (255, 255, 255, 100)  # a faint edge pixel
    canvas[21, 30:40] = (100, 100, 100, 255)  # a dark one
    assert np.array_equal(decode_mask(_url(Image.fromarray(canvas, "RGBA")), (64, 80)), labels > 0)


def test_export_zips_are_cleaned_up(setup, monkeypatch):
    _, store, studio = setup
    task = studio.task("ann")
    studio.accept("ann", task["view"], mask_png(square(store, task["image_id"])))
    first, _ = studio.export("png")
    assert first.is_file()
    monkeypatch.setattr(studio_module, "EXPORT_KEEP_S", -1.0)
    second, _ = studio.export("coco")
    assert second.is_file() and not first.exists() and second.parent.parent == first.parent.parent
    with pytest.raises(RequestError):
        studio.export("zip")
    studio.close()
    assert not second.parent.parent.exists()


def test_the_box_a_refine_starts_from(setup, monkeypatch):
    _, store, studio = setup
    task = studio.task("ann")
    w, h = task["width"], task["height"]
    used = []
    real = studio.slot.predictor.redraw
    monkeypatch.setattr(studio.slot.predictor, "redraw", lambda *a, **k: used.append(k["box"]) or real(*a, **k))
    drawn = studio.refine("ann", task["view"], [], [[1, 1]], [10, 10, 30, 30])  # a box given is used as given
    assert used[-1] == (10, 10, 30, 30) and drawn["box"] == [10, 10, 30, 30]  # and said back, to be drawn
    studio.refine("ann", task["view"], [], [[3, 3]])  # untrained, no proposal and no positive click: the whole image
    assert used[-1] == (0, 0, w, h)
    drawn = studio.refine("ann", task["view"], [[20, 10]], [])  # no proposal, a + click: no box, the predictor's
    assert used[-1] is None and drawn["box"] is None  # call (this decoder takes clicks as points, with no box)
    monkeypatch.setattr(studio.slot.predictor.model.backbone, "box_prompts", True)  # LiteMedSAM's: it starts one
    drawn = studio.refine("ann", task["view"], [[20, 10]], [])
    embedding, geometry = studio.slot.embedding(task["image_id"])
    assert drawn["box"] == pytest.approx(list(studio.slot.predictor.start_box(geometry, [(20.0, 10.0)])), abs=0.05)
    handout = studio._handouts[task["view"]]
    small = np.zeros(handout.shape, bool)
    small[2:6, 2:6] = True
    studio._handouts[task["view"]] = dataclasses.replace(handout, packed=np.packbits(small))  # as if it proposed this
    studio.refine("ann", task["view"], [], [[3, 3]])
    assert used[-1] == (2, 2, 6, 6)  # the shown mask's box
    studio.refine("ann", task["view"], [[7, 5]], [])
    assert used[-1] == (2, 2, 6, 6)  # the predictor widens it (model.inference.clicks_as_box)


def test_the_box_a_redraw_was_given_comes_back_to_be_drawn(setup, monkeypatch):
    """LiteMedSAM gets clicks as box edits: the page draws the box SAM was given, not the one it sent."""
    _, _, studio = setup
    task = studio.task("ann")
    monkeypatch.setattr(studio.slot.predictor.model.backbone, "box_prompts", True)
    pad = CLICK_BOX_PAD * max(task["width"], task["height"])
    widened = studio.refine("ann", task["view"], [[40, 30]], [], [10, 10, 30, 30])["box"]
    assert widened == pytest.approx([10, 10, 40 + pad, 30 + pad], abs=0.05)
    again = studio.refine("ann", task["view"], [[40, 30]], [[12, 20]], widened)["box"]  # the next click edits it
    assert again == pytest.approx([13, 10, 40 + pad, 30 + pad], abs=0.05)  # - click: the nearest edge moves past


def test_a_second_tab_of_the_same_annotator_is_no_conflict(setup):
    _, store, studio = setup
    first_tab, second_tab = studio.task("ann"), studio.task("ann")
    assert first_tab["image_id"] == second_tab["image_id"] and first_tab["view"] != second_tab["view"]
    studio.accept("ann", first_tab["view"], mask_png(square(store, first_tab["image_id"])))
    later = np.zeros_like(square(store, first_tab["image_id"]))
    later[1:4, 1:4] = True
    studio.accept("ann", second_tab["view"], mask_png(later))
    assert [m.conflict_with for m in store.mask_history(first_tab["image_id"])] == [None, None]
    assert np.array_equal(store.load_mask(first_tab["image_id"]), later) and studio.dashboard()["conflicts"] == []


def test_numbers_no_float_holds_are_refused(setup):
    _, _, studio = setup
    task = studio.task("ann")
    with pytest.raises(RequestError):
        studio.refine("ann", task["view"], [[10 ** 400, 1]], [])
    with pytest.raises(RequestError):
        studio.refine("ann", task["view"], [], [], [0, 0, 10 ** 400, 5])


def test_display_rewindows_the_shown_image_from_its_stored_values(setup):
    _, store, studio = setup
    task = studio.task("ann")
    pixels = store.load_image(task["image_id"])
    low, high = task["range"]
    assert (low, high) == (pixels.min(), pixels.max())
    assert task["window"] == [(low + high) / 2, high - low]  # phantoms carry no window: their whole range
    narrow = studio.display("ann", task["view"], 40, 20)  # values 30-50 span black to white
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(narrow["image"].split(",", 1)[1]))))
    expected = np.clip((pixels.astype(np.float32) - 30) / 20, 0, 1) * 255 + 0.5
    assert narrow["window"] == [40.0, 20.0] and np.array_equal(shown, expected.astype(np.uint8))
    for center, width in ((40, 0), (40, -5), ("x", 10), (float("nan"), 10)):
        with pytest.raises(RequestError, match="window"):
            studio.display("ann", task["view"], center, width)
    with pytest.raises(StaleView):  # another annotator's showing is not ann's to re-window
        studio.display("bob", task["view"], 40, 20)
    assert studio.display("ann", task["view"])["window"] == task["window"]  # none given: the image's own


def test_paging_through_a_volume_leases_the_neighbouring_unlabeled_slice(tmp_path):
    from annotation import import_sources, take
    from annotation_fixtures import write_nifti

    volume = np.random.default_rng(3).integers(0, 400, (40, 36, 5)).astype(np.int16)  # 5 slices of 36 x 40
    write_nifti(tmp_path / "src" / "scan.nii.gz", volume)
    store = Store(tmp_path / "ws")
    import_sources(store, [tmp_path / "src"], with_masks=False, progress=False)
    studio = Studio(store, ModelSlot(store, "micro_random", tmp_path / "cache"))
    try:
        slices = {info.slice_index: info.id for info in store.images()}
        store.mark_no_finding(slices[2], "ann")  # labeled: paging passes over it
        assert store.neighbour_slice(slices[1], 1) == slices[3] and store.neighbour_slice(slices[1], -1) == slices[0]
        assert store.neighbour_slice(slices[4], 1) is None and not take(store, "ann", slices[2])  # labeled
        assert take(store, "ann", slices[1])  # start on slice 1, whatever the queue's order
        shown = studio.task("ann")
        assert shown["image_id"] == slices[1]
        with pytest.raises(RequestError, match="step"):
            studio.page("ann", shown["view"], 2)
        after = studio.page("ann", shown["view"], 1)
        assert after["image_id"] == slices[3] and "slice 3" in after["message"]
        assert after["paged_from"] == slices[1]  # the page may carry slice 1's box to this slice
        again = studio.task("ann")
        assert again["image_id"] == slices[3] and "paged_from" not in again  # the queue hands out the slice paged to
        assert take(store, "bob", slices[4]) and not take(store, "ann", slices[4])
        held = studio.page("ann", after["view"], 1)  # slice 4 is bob's: passed over, and nothing is after it
        assert held["image_id"] == slices[3] and "no unlabeled slice after" in held["message"]
        assert store.neighbour_slice(slices[1], 1, free_for="bob") == slices[4]  # ann's slice 3 passed over
        assert take(store, "bob", slices[0])
        assert store.neighbour_slice(slices[1], -1, free_for="ann") is None  # slice 0 is bob's now
        assert store.neighbour_slice(slices[1], -1) == slices[0]
        with store.transaction() as conn:
            conn.execute("DELETE FROM leases WHERE image_id = ?", (slices[0],))  # bob lets slice 0 go
        back = studio.page("ann", after["view"], -1)  # slice 2 is labeled: back to slice 1, which ann let go
        assert back["image_id"] == slices[1]
        first = studio.page("ann", back["view"], -1)
        assert first["image_id"] == slices[0]
        stay = studio.page("ann", first["view"], -1)  # nothing before slice 0: said, and ann stays on it
        assert stay["image_id"] == slices[0] and "no unlabeled slice before" in stay["message"]
        assert "paged_from" not in stay
        assert stay["view"] == first["view"]  # the same showing: a new one could hold another model's proposal,
        # which an unedited Accept would save unseen
        square = np.zeros((36, 40), bool)  # a slice is the transpose: 40 wide, 36 high
        square[5:9, 5:9] = True
        off = studio.accept("ann", stay["view"], mask_png(square), step=-1)  # saved; no slice before: the queue's
        assert off["image_id"] != slices[0] and "the queue's next image" in off["message"]
        assert "paged_from" not in off  # not a neighbour: the page must not carry slice 0's box to it
    finally:
        studio.close()
        store.close()


def test_a_server_defect_reaches_the_page_as_a_reference_to_the_log_not_its_text(capsys):
    from app.ui import reported

    def task(data, request):
        raise KeyError("/srv/secret/workspace/masks/7.png")

    def no_finding(data, request):
        raise SaveRefused("image 7 is being labeled by someone else now")

    answer = reported(task)({}, None)
    logged = capsys.readouterr().err
    ref = answer["error"].split()[2]
    assert answer["error"].startswith("server error ") and "KeyError" not in answer["error"]
    assert "secret" not in answer["error"] and "reload" in answer["error"]
    assert f"server error {ref} in task" in logged and "KeyError: '/srv/secret" in logged  # the log has it all
    assert reported(no_finding)({}, None) == {"error": "image 7 is being labeled by someone else now", "stale": False}


def test_an_image_that_cannot_be_shown_is_skipped_and_said_not_handed_out_again(setup):
    """Its pixel file gone: the lease kept handing it back, every request failed, and the page could not skip what
    it never showed."""
    _, store, studio = setup
    first = studio.task("ann")["image_id"]
    studio._ahead.submit(lambda: None).result()  # the prefetch of the next image is done: clearing is final
    studio._views.clear()
    store.files.path(store.image(first).file).unlink()
    task = studio.task("ann")
    assert task["image_id"] not in (None, first) and task["view"]
    assert f"{store.image(first).name} could not be shown (FileNotFoundError" in task["message"]
    events = [e for e in store.events() if e["what"] == "render_failed"]
    assert [(e["image_id"], e["who"]) for e in events] == [(first, "ann")]
    for image in store.images(split="pool", state="unlabeled"):  # break every image: the request fails, loudly
        path = store.files.path(image.file)
        if path.exists():
            path.unlink()
    studio._ahead.submit(lambda: None).result()
    studio._views.clear()
    with pytest.raises(FileNotFoundError):
        studio.task("ann")
    assert len([e for e in store.events() if e["what"] == "render_failed"]) == 1 + studio_module.RENDER_TRIES


def test_a_keep_or_refine_on_a_skipped_or_tagged_showing_does_not_take_the_image_back(setup):
    """A brush stroke's keep still in flight when S (or T) is pressed, or a second tab on the same showing."""
    _, store, studio = setup
    for answer in (lambda view: studio.skip("ann", view), lambda view: studio.tag_only("ann", view, True)):
        shown = studio.task("ann")
        answer(shown["view"])
        with pytest.raises(StaleView):
            studio.keep("ann", shown["view"])
        with pytest.raises(StaleView):
            studio.refine("ann", shown["view"], [[5, 5]], [])
        held = store.conn.execute("SELECT annotator FROM leases WHERE image_id = ?", (shown["image_id"],)).fetchall()
        assert held == []  # free for others, not held for 10 minutes


def test_palette_grey_alpha_and_colour_label_pngs_with_0_1_values_are_not_read_as_empty():
    labels = np.zeros((64, 80), np.uint8)
    labels[10:20, 30:40] = 1
    palette = Image.fromarray(labels, "P")
    palette.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 white: read by index, not colour
    grey_alpha = Image.fromarray(np.dstack([labels, np.full_like(labels, 255)]), "LA")
    colour = Image.fromarray(np.dstack([labels] * 3), "RGB")
    for picture in (palette, grey_alpha, colour):
        assert np.array_equal(decode_mask(_url(picture), (64, 80)), labels > 0), picture.mode
