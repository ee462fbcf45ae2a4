"""What an annotator session does, independent of Gradio: fetch the next task with the model's proposal, save,
undo, refine with clicks; the dashboard's figures come from app.dashboard, the served model from app.model_slot,
the pictures from app.pictures.

Every action returns a plain dict (JSON-ready) so the browser draws it without further requests: the image, mask
and CAM travel as PNG data URLs. The proposal for the image the queue will hand out next is computed in the
background while the annotator works, so accept -> next image costs a save and a cache lookup.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import math
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from annotation import (EXPORT_FORMATS, MaskInfo, SaveRefused, Store, export_zip, next_task, renew_lease, skip,
                        take)
from annotation.decode import first_line
from annotation.queue import peek_next
from app import dashboard
from app.errors import RequestError, StaleView
from app.model_slot import PRETRAINED, ModelSlot
from app.pictures import cam_picture, decode_mask, png_data_url
from app.status import RETRAIN_REQUESTED, TAG, WORKSPACE_NOTE, read_remote_status, read_status
from model.metrics import dice
from model.preprocess import mask_box

RENEW_EVERY_S = 30.0  # clicks renew the 10-minute lease at most this often
MAX_POINTS = 64  # clicks per refine (adasam serve --max-points): each one costs decoder time under the model lock
HANDOUTS_PER_ANNOTATOR = 8  # showings an annotator can still answer (a reload or prefetch race needs a few)
HANDOUTS_MAX = 4096  # showings remembered in all (masks bit-packed: ~30 KB each at 500 x 500)
RENDER_TRIES = 3  # images in a row that cannot be shown before a request fails instead of skipping on
EXPORT_KEEP_S = 600.0  # a downloaded export zip is deleted after this long (Gradio serves its own copy)


@dataclass(frozen=True)
class Handout:
    """One showing of a proposal to one annotator: what a save answering it stores, and what it must not overwrite.

    `shown_version` is the image's live mask version at that moment (0: unlabeled); the mask is kept bit-packed."""

    token: str
    annotator: str
    image_id: int
    model_version: str
    shown_version: int
    box: tuple[float, ...]
    shape: tuple[int, int]
    packed: np.ndarray

    def mask(self) -> np.ndarray:
        return np.unpackbits(self.packed, count=self.shape[0] * self.shape[1]).reshape(self.shape).astype(bool)


@dataclass
class View:
    """One image as shown under one model: pictures ready to send, and the mask for later comparison."""

    image_id: int
    model_version: str
    payload: dict[str, Any]
    mask: np.ndarray


def _points(value: Any, width: int, height: int) -> list[tuple[float, float]]:
    """Clicks as a list of [x, y] numbers inside the image, or RequestError."""
    if not isinstance(value, list):
        raise RequestError(f"clicks must be a list of [x, y] pairs, not {type(value).__name__}")
    points = []
    for point in value:
        if not (isinstance(point, list) and len(point) == 2 and all(_is_number(v) for v in point)):
            raise RequestError(f"a click must be [x, y] with two numbers, not {str(point)[:40]}")
        x, y = float(point[0]), float(point[1])
        if not (0 <= x <= width and 0 <= y <= height):
            raise RequestError(f"click ({x:g}, {y:g}) is outside the {width}x{height} image")
        points.append((x, y))
    return points


def _box(value: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """A prompt box [x0, y0, x1, y1] clipped to the image, or RequestError."""
    if not (isinstance(value, (list, tuple)) and len(value) == 4 and all(_is_number(v) for v in value)):
        raise RequestError(f"a box must be [x0, y0, x1, y1] with four numbers, not {str(value)[:60]}")
    x0, y0, x1, y1 = (float(v) for v in value)
    x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
    y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
    return x0, y0, x1, y1


def _is_number(value: Any) -> bool:
    """A finite JSON number (10**400 is an int that no float holds: refused, not an OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


class Studio:
    """Annotator actions on one workspace; thread-safe (Store is, model calls are serialised)."""

    def __init__(self, store: Store, slot: ModelSlot, round_every: int = 10, max_points: int = MAX_POINTS,
                 local_trainer: bool = True) -> None:
        self.store = store
        self.slot = slot
        self.round_every = round_every
        self.local_trainer = local_trainer  # False under `adasam serve --no-trainer`: no trainer status to show
        self.max_points = max_points
        self._handouts: dict[str, Handout] = {}  # token -> showing, oldest first
        self._by_annotator: dict[str, collections.deque[str]] = {}
        self._handouts_lock = threading.Lock()
        self._exports: Path | None = None  # one folder for this server's export zips, removed at close
        self._exports_lock = threading.Lock()
        self._views: OrderedDict[tuple[int, str], View] = OrderedDict()
        self._views_lock = threading.Lock()
        self._ahead = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._renewed: dict[tuple[str, int], float] = {}  # last lease renewal per (annotator, image)

    # -- views -------------------------------------------------------------------------------------------------

    def view(self, image_id: int) -> View:
        """The model's proposal for an image, from the cache of views or computed now."""
        self.slot.refresh()
        key = (image_id, self.slot.version)
        with self._views_lock:
            if key in self._views:
                self._views.move_to_end(key)
                return self._views[key]
        view = self._render(image_id)
        with self._views_lock:
            self._views[(image_id, view.model_version)] = view
            while len(self._views) > 32:
                self._views.popitem(last=False)
        return view

    def _render(self, image_id: int) -> View:
        info = self.store.image(image_id)
        embedding, geometry = self.slot.embedding(image_id)
        pixels = self.store.load_image(image_id)  # the stored values: the window sliders' range
        with self.slot.lock:
            version, trained = self.slot.version, self.slot.trained
            prediction = self.slot.predictor.predict(embedding, geometry, self.slot.image_input(pixels))
        # Untrained, the backbone prompted by the whole image proposes a whole-image mask the annotator would have to
        # erase: propose nothing instead, with the box tool ready (one dragged box gives 0.908 Dice on BUSI).
        mask = prediction.mask if trained else np.zeros((info.height, info.width), bool)
        payload = {
            "image_id": image_id, "name": info.name, "width": info.width, "height": info.height,
            "image": png_data_url(self.store.load_display(image_id, pixels=pixels)),
            "window": list(self.store.display_window(image_id, pixels)),
            "range": list(self.store.value_range(image_id, pixels)),
            "cam": png_data_url(cam_picture(prediction.cam)) if trained else None,
            "mask": png_data_url((mask * 255).astype(np.uint8)),
            "box": [round(float(v), 1) for v in prediction.box] if trained else None,
            "probability": round(prediction.probability, 4) if trained else None,
            "uncertainty": round(prediction.uncertainty.combined, 4) if trained else None,  # random heads: no signal
            "box_is_fallback": bool(prediction.box_is_fallback) if trained else False,
            "model": version,
        }
        return View(image_id, version, payload, mask)

    def _prefetch(self, annotator: str) -> None:
        """Prepare the proposal for the image the queue will hand out next (errors only cost the head start)."""
        def work() -> None:
            try:
                image_id = peek_next(self.store, annotator)
                if image_id is not None:
                    self.view(image_id)
            except Exception:  # noqa: BLE001 - the real request will compute (and report) it again
                pass
        self._ahead.submit(work)

    # -- actions -----------------------------------------------------------------------------------------------

    def task(self, annotator: str, message: str = "") -> dict[str, Any]:
        """The annotator's current (or next) image with the model's proposal, counts and notes. `view` in the answer
        names this showing: every later action on the image must echo it."""
        payload: dict[str, Any] = {"image_id": None, "view": None}
        failed: list[int] = []
        self.slot.refresh()  # a model that fails to load is the server's fault, not the image's: no skipping for it
        while (task := next_task(self.store, annotator)) is not None:
            if task.image.id in failed:  # only images that cannot be shown are left
                skip(self.store, annotator, task.image.id)
                break
            try:
                view = self.view(task.image.id)
            except (OSError, ValueError, EOFError) as exc:
                # the image's own data gone, unreadable or corrupt: it was handed out again and again (the lease
                # keeps it), and the page cannot skip what it never showed. Skip it here, say so, log it, go on. A
                # fault of the server's own (a bug, out of memory) is no image's, and is raised as it was.
                error = f"{type(exc).__name__}: {first_line(exc)}"
                self.store.log_event(annotator, "render_failed", {"error": error}, task.image.id)
                skip(self.store, annotator, task.image.id)
                failed.append(task.image.id)
                note = f"{task.image.name} could not be shown ({error}) and was skipped"
                message = f"{message}; {note}" if message else note
                if len(failed) >= RENDER_TRIES:  # not one bad image: a fault the server must report
                    raise
                continue
            payload = dict(view.payload)
            payload["view"] = self._hand_out(annotator, view).token
            payload["skipped_before"] = task.skipped_before
            self._prefetch(annotator)
            break
        payload.update(self._header(annotator), message=message)
        return payload

    def accept(self, annotator: str, view: str, mask_png: str | None = None, step: int | None = None) -> dict[str, Any]:
        """Save the mask as drawn, or (mask_png None) exactly the proposal this annotator was shown, and move on: to
        the queue's next image, or with `step` (1 / -1) to the next / previous unlabeled slice of the same volume
        when there is a free one (PageDown / PageUp after editing a slice)."""
        if step not in (None, 1, -1):
            raise RequestError(f"step must be 1 or -1, not {step!r}")
        with self._answering(annotator, view) as handout:
            info = self.store.image(handout.image_id)
            shown = handout.mask()
            mask = shown if mask_png is None else decode_mask(mask_png, (info.height, info.width))
            # before the first round the page proposes nothing: what is saved is the annotator's own, even an empty
            # canvas accepted as it was (stored as a model's proposal, export left it out and the dashboard counted
            # it as a proposal accepted with Dice 1)
            proposed = handout.model_version != PRETRAINED
            unchanged = bool(np.array_equal(mask, shown))
            accepted = proposed and unchanged
            origin = "accepted_prediction" if accepted else "human"
            saved = self.store.save_mask(info.id, mask, annotator, origin=origin, model_version=_registered(handout),
                                         shown_version=handout.shown_version, unchanged=unchanged)
        self._review(annotator, handout, mask, saved.version)
        what = "accepted as proposed" if accepted else "saved your corrected mask" if proposed else "saved your mask"
        message = f"{info.name}: {what}{self._conflict_note(saved)}"
        if step is not None:
            neighbour = self.store.neighbour_slice(info.id, step, free_for=annotator)
            if neighbour is not None and take(self.store, annotator, neighbour):
                message += f"; slice {self.store.image(neighbour).slice_index} of this volume next"
                return _paged(self.task(annotator, message), info.id, neighbour)
            message += "; no free slice that way in this volume: the queue's next image"
        return self.task(annotator, message)

    def no_finding(self, annotator: str, view: str) -> dict[str, Any]:
        with self._answering(annotator, view) as handout:
            saved = self.store.mark_no_finding(handout.image_id, annotator, shown_version=handout.shown_version)
        self._review(annotator, handout, np.zeros(handout.shape, bool), saved.version)
        name = self.store.image(handout.image_id).name
        return self.task(annotator, f"{name}: marked no finding{self._conflict_note(saved)}")

    def tag_only(self, annotator: str, view: str, present: bool = True) -> dict[str, Any]:
        """An image-level label without a mask; the image goes to the back of this annotator's queue."""
        if not isinstance(present, bool):
            raise RequestError(f"present must be true or false, not {present!r}")
        with self._answering(annotator, view) as handout:  # answered: a late keep or refine on it takes nothing back
            image_id = handout.image_id
            self.store.set_tag(image_id, TAG, present, annotator)
            skip(self.store, annotator, image_id)
        word = "present" if present else "absent"
        return self.task(annotator, f"{self.store.image(image_id).name}: tagged '{TAG} {word}' (no mask)")

    def skip(self, annotator: str, view: str) -> dict[str, Any]:
        """The image to the back of this annotator's queue. The showing is answered: a keep or refine still in
        flight for it (a brush stroke just before S) is stale, and does not lease the skipped image again."""
        with self._answering(annotator, view) as handout:
            image_id = handout.image_id
            skip(self.store, annotator, image_id)
        return self.task(annotator, f"{self.store.image(image_id).name}: skipped (back of your queue)")

    def undo(self, annotator: str, save: int | None = None) -> dict[str, Any]:
        """Withdraw the annotator's last save; that image comes back to them if it is unlabeled again. `save` (the
        `last_save` id the page was shown) makes the request safe to repeat: only that save is withdrawn."""
        if save is not None and (isinstance(save, bool) or not isinstance(save, int)):
            raise RequestError(f"save must be a mask id (an integer), not {save!r}")
        undone = self.store.undo_last(annotator, expected=save)
        if undone is None:
            return self.task(annotator, "nothing of yours to undo")
        return self.task(annotator, f"{self.store.image(undone.image_id).name}: undid your {undone.origin} save")

    def keep(self, annotator: str, view: str) -> dict[str, Any]:
        """The canvas says the annotator is still editing (brush strokes reach the server only with the save): keep
        their lease, or SaveRefused if the image went to someone else meanwhile."""
        self._keep_lease(annotator, self._handout(annotator, view).image_id)
        return {"kept": True}

    def _keep_lease(self, annotator: str, image_id: int) -> None:
        key = (annotator, image_id)
        if time.monotonic() - self._renewed.get(key, -math.inf) > RENEW_EVERY_S:
            if not renew_lease(self.store, annotator, image_id):  # a durable commit: not on every click
                raise SaveRefused(f"image {image_id} is being labeled by someone else now")
            self._renewed[key] = time.monotonic()

    def refine(self, annotator: str, view: str, positive: list, negative: list,
               box: list | None = None) -> dict[str, Any]:
        """Re-run the decoder on the cached embedding with clicks and a box (LiteMedSAM needs the box with clicks:
        the one given, else the shown mask's box, else the proposal's, else the whole image when no click is +;
        model.inference turns the clicks into edits of that box for it, starts a box at + clicks when there is none
        or they are far from it, adds for a + click the box's mask misses the mask of a smaller box around it, and
        removes the piece of the mask beyond the box a - click lies on). Input is checked before anything happens;
        someone still editing keeps their lease."""
        started = time.perf_counter()
        handout = self._handout(annotator, view)
        height, width = handout.shape
        positive, negative = _points(positive, width, height), _points(negative, width, height)
        if len(positive) + len(negative) > self.max_points:
            raise RequestError(f"{len(positive) + len(negative)} clicks in one refine; at most {self.max_points} "
                               f"(adasam serve --max-points)")
        if box is None:
            shown_box = mask_box(handout.mask())
            box = list(handout.box) if shown_box is None else [float(v) for v in shown_box]
        # no box and a + click: the predictor starts one at the clicks; no box and no + click: the whole image
        box = _box(box, width, height) if box else None if positive else (0.0, 0.0, float(width), float(height))
        self._keep_lease(annotator, handout.image_id)
        embedding, geometry = self.slot.embedding(handout.image_id)
        with self.slot.lock:
            mask, used = self.slot.predictor.redraw(embedding, geometry, positive=positive, negative=negative, box=box)
        return {"image_id": handout.image_id, "mask": png_data_url((mask * 255).astype(np.uint8)),
                "box": None if used is None else [round(float(v), 1) for v in used], "pixels": int(mask.sum()),
                "ms": round(1000 * (time.perf_counter() - started), 1)}

    def page(self, annotator: str, view: str, step: Any) -> dict[str, Any]:
        """Go from the shown slice to the nearest unlabeled one after (`step` 1) or before (-1) it in its volume
        (PageDown / PageUp), out of queue order; the shown slice goes back to the queue."""
        if step not in (1, -1):
            raise RequestError(f"step must be 1 or -1, not {step!r}")
        handout = self._handout(annotator, view)
        neighbour = self.store.neighbour_slice(handout.image_id, step, free_for=annotator)
        if neighbour is None:  # said, not refused: the annotator stays on the same showing (a new one could hold
            # another model's proposal, which an unedited Accept would then save unseen)
            way = "after" if step > 0 else "before"
            return {**self._header(annotator), "image_id": handout.image_id, "view": view,
                    "model": handout.model_version,
                    "message": f"no unlabeled slice {way} this one in its volume (or it is not a slice)"}
        if not take(self.store, annotator, neighbour):
            raise SaveRefused(f"the next slice (image {neighbour}) is being labeled by someone else now")
        return _paged(self.task(annotator, f"slice {self.store.image(neighbour).slice_index} of this volume"),
                      handout.image_id, neighbour)

    def display(self, annotator: str, view: str, center: Any = None, width: Any = None) -> dict[str, Any]:
        """The shown image again through another window (window/level on the canvas; none given: the image's own),
        from its stored values: an 8-bit picture cannot be re-windowed in the browser without losing what its first
        window clipped."""
        handout = self._handout(annotator, view)
        if center is None and width is None:
            center, width = self.store.display_window(handout.image_id)
        try:
            center, width = float(center), float(width)
        except (TypeError, ValueError):
            raise RequestError(f"window center and width must be numbers, not {center!r} and {width!r}") from None
        if not (math.isfinite(center) and math.isfinite(width) and width > 0):
            raise RequestError(f"window width must be above 0 and both values finite, not {center} / {width}")
        return {"image_id": handout.image_id, "window": [center, width],
                "image": png_data_url(self.store.load_display(handout.image_id, (center, width)))}

    def retrain_now(self, annotator: str) -> str:
        self.store.set_setting(RETRAIN_REQUESTED, time.time(), who=annotator)
        return "Asked the trainer for a round now; the dashboard shows its progress."

    def set_target_dice(self, value: float | None, annotator: str) -> float:
        return dashboard.set_target_dice(self.store, value, annotator)

    def projection(self, rounds: list[dict]) -> dict[str, Any]:
        return dashboard.projection(self.store, rounds)

    def dashboard(self) -> dict[str, Any]:
        """Everything the dashboard tab shows, as plain data (app.dashboard)."""
        return dashboard.dashboard(self.store, self.slot, self.round_every, self.local_trainer)

    # -- what each annotator was shown ---------------------------------------------------------------------------

    def _hand_out(self, annotator: str, view: View) -> Handout:
        """Remember this showing of `view` to `annotator` under a new token (their oldest beyond a few expire)."""
        handout = Handout(secrets.token_urlsafe(12), annotator, view.image_id, view.model_version,
                          self.store.live_version(view.image_id), tuple(view.payload["box"] or ()),
                          view.mask.shape, np.packbits(view.mask))
        with self._handouts_lock:
            self._handouts[handout.token] = handout
            mine = self._by_annotator.setdefault(annotator, collections.deque())
            mine.append(handout.token)
            while len(mine) > HANDOUTS_PER_ANNOTATOR:
                self._handouts.pop(mine.popleft(), None)
            while len(self._handouts) > HANDOUTS_MAX:  # many short-lived anonymous browsers
                oldest = self._handouts.pop(next(iter(self._handouts)))
                self._forget(oldest)
        return handout

    def _handout(self, annotator: str, token: str) -> Handout:
        """The showing a request answers to; only its own annotator may act on it."""
        if not isinstance(token, str) or not token:
            raise RequestError("the request names no view (the proposal it answers to): reload the page")
        with self._handouts_lock:
            handout = self._handouts.get(token)
        if handout is None or handout.annotator != annotator:
            raise StaleView("this proposal is no longer on record (already saved, too old, or the server restarted):"
                            " nothing was saved; the current one is shown again")
        return handout

    @contextlib.contextmanager
    def _answering(self, annotator: str, token: str) -> Iterator[Handout]:
        """A showing answers one save: it is taken before saving, so a replayed or doubled request finds nothing;
        put back if the save fails or is refused (the annotator may correct the mask and try again)."""
        handout = self._handout(annotator, token)
        with self._handouts_lock:
            if self._handouts.pop(token, None) is None:
                raise StaleView("this proposal was just saved by another request: nothing more was saved")
            self._forget(handout)
        try:
            yield handout
        except BaseException:
            with self._handouts_lock:
                self._handouts[token] = handout
                self._by_annotator.setdefault(annotator, collections.deque()).append(token)
            raise

    def _forget(self, handout: Handout) -> None:
        """Drop a showing from its annotator's list (the caller holds the lock and has popped it already)."""
        mine = self._by_annotator[handout.annotator]
        mine.remove(handout.token)
        if not mine:
            del self._by_annotator[handout.annotator]

    def _conflict_note(self, saved: MaskInfo) -> str:
        if saved.conflict_with is None:
            return ""
        other = next(m for m in self.store.mask_history(saved.image_id) if m.version == saved.conflict_with)
        return (f". {other.annotator} saved this image meanwhile (version {other.version}): both versions are kept"
                f" and the conflict is listed on the dashboard")

    def _review(self, annotator: str, handout: Handout, saved: np.ndarray, version: int) -> None:
        """Remember how far the saved mask is from the proposal shown: the dashboard's effort-saved figure. Nothing
        before the first round: nothing was proposed (an empty canvas counted as a proposal kept with Dice 1)."""
        if handout.model_version == PRETRAINED:
            return
        shown = handout.mask()
        self.store.log_event(annotator, "review", {
            "dice_shown_saved": round(dice(shown, saved), 4), "model": handout.model_version,
            "mask_version": version, "changed_pixels": int((shown != saved).sum())}, handout.image_id)

    # -- figures -----------------------------------------------------------------------------------------------

    def _header(self, annotator: str) -> dict[str, Any]:
        pool = self.store.split_states("pool")
        last = self.store.last_save(annotator)
        trainer = dashboard.trainer_line(read_status(self.store.root), read_remote_status(self.store.root),
                                          self.local_trainer)
        return {"annotator": annotator, "done": pool.get("masked", 0) + pool.get("no_finding", 0),
                "left": pool.get("unlabeled", 0), "model": self.slot.version, "model_note": self.slot.note(),
                "workspace_note": self.store.get_setting(WORKSPACE_NOTE, ""), "trainer": trainer,
                "last_save": None if last is None else {"id": last.id, "image": self.store.image(last.image_id).name}}

    def export(self, fmt: str, include_predictions: bool = False) -> tuple[Path, str]:
        """`adasam export` zipped for download -> (zip, one-line summary). Zips live in one folder of this server's,
        older ones are deleted at each export (the web server has copied them by then) and the folder at close."""
        if fmt not in EXPORT_FORMATS:
            raise RequestError(f"export format must be {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
        if not isinstance(include_predictions, bool):
            raise RequestError(f"include_predictions must be true or false, not {include_predictions!r}")
        with self._exports_lock:  # two exports at once share one folder
            if self._exports is None:
                self._exports = Path(tempfile.mkdtemp(prefix="adasam-export-"))
            for old in self._exports.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - old.stat().st_mtime > EXPORT_KEEP_S:
                        shutil.rmtree(old, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(dir=self._exports))
        archive, summary = export_zip(self.store, tmp, fmt, include_predictions=include_predictions)
        left_out = f"; {len(summary.skipped)} left out ({summary.skipped[0][1]}, for one)" if summary.skipped else ""
        return archive, (f"Exported {summary.images} masks ({summary.empty} empty) as {summary.format}, "
                         f"checked by reading them back: {archive.name}{left_out}")

    def close(self) -> None:
        """Cancel queued prefetches and wait for a running one (at most one proposal, ~0.1 s): it reads the store,
        whose connections the caller may close next, and closing a SQLite connection in use crashes the process."""
        self._ahead.shutdown(wait=True, cancel_futures=True)
        if self._exports is not None:
            shutil.rmtree(self._exports, ignore_errors=True)


def _paged(payload: dict[str, Any], previous: int, neighbour: int) -> dict[str, Any]:
    """Mark a task that is the neighbouring slice paged to (`paged_from`: the slice left): only then may the page
    prompt SAM with the box of the mask left behind (it did so on any image of the same size, e.g. the queue's next
    image when no slice was free, and a carried-over lesion was saved as the annotator's)."""
    if payload.get("image_id") == neighbour:
        payload["paged_from"] = previous
    return payload


def _registered(handout: Handout) -> str | None:
    """The model version to store with a mask: only published versions exist in the workspace's model table."""
    return None if handout.model_version == PRETRAINED else handout.model_version


