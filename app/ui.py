"""The Gradio layout: Annotate (a canvas with its own JavaScript), Dashboard and Export tabs, and a small API.

The canvas calls Python through gr.HTML server functions (one plain HTTP request per action, not the event queue),
which keeps accept -> next image short. The same actions are also published as named API endpoints
(`/task`, `/accept`, `/no_finding`, `/tag`, `/skip`, `/undo`, `/refine`, `/dashboard`, `/export`) for gradio_client.
"""
# No `from __future__ import annotations`: Gradio reads the gr.Request annotations at runtime.
import functools
import hashlib
import html
import json
import sys
import traceback
import uuid
from pathlib import Path
from typing import Any, Optional

import gradio as gr
import numpy as np

from annotation import EXPORT_FORMATS, WorkspaceError
from app.guard import BROWSER_COOKIE
from app.status import WORKSPACE_NOTE
from app import dashboard
from app.errors import RequestError, StaleView
from app.studio import Studio
from model.learning_curve import CurveFit

STATIC = Path(__file__).parent / "static"
PAGE_CSS = """
.gradio-container { max-width: 100% !important; }
.dash-figures table { font-variant-numeric: tabular-nums; }
"""


def annotator_of(request: Any, default: str) -> str:
    """The logged-in user (Gradio's login cookie); without --auth, an anonymous identity of this browser (its
    `adasam-browser` cookie, else the client's Gradio session) named after `default`, so two people never share
    one queue position or lease."""
    name = getattr(request, "username", None)
    if name:
        return name
    raw = getattr(request, "request", None) or request  # gr.Request wraps the fastapi.Request
    app = getattr(raw, "app", None)
    if app is not None and getattr(app, "auth", None) is not None:
        cookie_id = app.cookie_id
        token = raw.cookies.get(f"access-token-{cookie_id}") or raw.cookies.get(f"access-token-unsecure-{cookie_id}")
        user = app.tokens.get(token)
        if not user:
            raise PermissionError("not logged in")
        return user
    cookies = getattr(raw, "cookies", None) or {}
    browser = cookies.get(BROWSER_COOKIE) or getattr(request, "session_hash", None)
    if not browser:
        return default
    return f"{default}-{hashlib.sha256(browser.encode()).hexdigest()[:6]}"


def as_text(value: Any, what: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise RequestError(f"{what} must be a string, not {type(value).__name__}")
    return value


def as_json(value: Any, what: str) -> Any:
    """An API argument sent as JSON text (clicks, box)."""
    try:
        return json.loads(as_text(value, what))
    except ValueError:
        raise RequestError(f"{what} is not valid JSON") from None


REFUSALS = (RequestError, WorkspaceError, PermissionError)  # a request refused as asked, with a message to show


def reported(fn):
    """A canvas server function that answers {"error": ...} instead of failing, so the page can say what happened
    (`stale`: the page should fetch its current task again)."""
    @functools.wraps(fn)
    def run(data: dict, request: gr.Request) -> dict:
        try:
            if not isinstance(data, dict):
                raise RequestError("the request must be a JSON object")
            return fn(data, request)
        except REFUSALS as exc:  # refused as asked: nothing changed
            return {"error": str(exc), "stale": isinstance(exc, StaleView)}
        except Exception:  # noqa: BLE001 - a defect: logged in full here, the page gets a reference to it
            ref = uuid.uuid4().hex[:8]
            print(f"server error {ref} in {fn.__name__}:", file=sys.stderr)
            traceback.print_exc()
            return {"error": f"server error {ref} (the server's log has the details); reload to see what was saved"}

    return run


def refused(fn):
    """An API endpoint whose refusals reach gradio_client as the message itself (gr.Error), not 'Error'."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except REFUSALS as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    return run


def build_ui(studio: Studio, default_annotator: str = "annotator") -> gr.Blocks:
    who = lambda request: annotator_of(request, default_annotator)  # noqa: E731

    # -- server functions for the canvas (one dict in, one dict out) -------------------------------------------
    def task(data: dict, request: gr.Request) -> dict:
        return studio.task(who(request))

    # Each action names the showing it answers (`view`, from the task it was shown in).
    def accept(data: dict, request: gr.Request) -> dict:
        return studio.accept(who(request), as_text(data.get("view"), "view"),
                             as_text(data.get("mask"), "mask", True), data.get("step"))

    def no_finding(data: dict, request: gr.Request) -> dict:
        return studio.no_finding(who(request), as_text(data.get("view"), "view"))

    def tag(data: dict, request: gr.Request) -> dict:
        return studio.tag_only(who(request), as_text(data.get("view"), "view"),
                               data.get("present", True))  # Studio refuses anything but a boolean

    def skip(data: dict, request: gr.Request) -> dict:
        return studio.skip(who(request), as_text(data.get("view"), "view"))

    def undo(data: dict, request: gr.Request) -> dict:
        return studio.undo(who(request), data.get("save"))

    def refine(data: dict, request: gr.Request) -> dict:
        return studio.refine(who(request), as_text(data.get("view"), "view"), data.get("positive", []),
                             data.get("negative", []), data.get("box"))

    def keep(data: dict, request: gr.Request) -> dict:
        return studio.keep(who(request), as_text(data.get("view"), "view"))

    def page_slice(data: dict, request: gr.Request) -> dict:  # not `page`: a Gradio block attribute
        return studio.page(who(request), as_text(data.get("view"), "view"), data.get("step", 1))

    def display(data: dict, request: gr.Request) -> dict:
        return studio.display(who(request), as_text(data.get("view"), "view"), data.get("center"), data.get("width"))

    # delete_cache: Gradio's copies of export zips (and uploads) older than an hour go, checked every 10 minutes
    with gr.Blocks(title="ADA-SAM Studio", fill_width=True, delete_cache=(600, 3600)) as demo:
        gr.Markdown("## ADA-SAM Studio")
        note = studio.store.get_setting(WORKSPACE_NOTE, "")  # written once, by the first-run seeding
        gr.Markdown(f"**About these images:** {note}" if note else "", elem_id="workspace-note")
        with gr.Tabs():
            with gr.Tab("Annotate", id="annotate"):
                gr.HTML(value="", html_template=(STATIC / "annotator.html").read_text(),
                        css_template=(STATIC / "annotator.css").read_text(),
                        js_on_load=(STATIC / "annotator.js").read_text(), elem_id="annotator",
                        server_functions=[reported(f) for f in (task, accept, no_finding, tag, skip, undo, refine,
                                                                  keep, display, page_slice)])
            with gr.Tab("Dashboard", id="dashboard") as dash_tab:
                with gr.Row():
                    refresh = gr.Button("Refresh", scale=0, elem_id="dash-refresh")
                    retrain = gr.Button("Retrain now", scale=0, variant="primary", elem_id="retrain")
                    retrain_msg = gr.Markdown()
                    target = gr.Number(value=lambda: dashboard.target_dice(studio.store), label="Target val Dice",
                                       minimum=0.01, maximum=0.99, step=0.01, scale=0, elem_id="target-dice")
                with gr.Row():
                    curve = gr.HTML(elem_id="dice-curve")
                    figures = gr.HTML(elem_id="dash-figures", elem_classes="dash-figures")
                rounds = gr.Dataframe(label="Training rounds", elem_id="rounds", interactive=False)
                people = gr.Dataframe(label="Annotators (latest live labels)", elem_id="annotators",
                                      interactive=False)
            with gr.Tab("Export", id="export"):
                gr.Markdown("Exports the latest mask of every labeled image (no finding = an empty mask) with "
                            "`manifest.csv` and `provenance.json`: the same code as `adasam export`. Masks accepted "
                            "unchanged from the model count as predictions unless you include them. `nnunet`: an "
                            "nnU-Net v2 raw dataset (`imagesTr`, `labelsTr`, `dataset.json`), ready for "
                            "`nnUNetv2_plan_and_preprocess`. `dicom-seg`: one DICOM SEG per source series, for a PACS "
                            "or viewer (images not imported from DICOM are left out).")
                fmt = gr.Radio(list(EXPORT_FORMATS), value="png", label="Format", elem_id="export-format")
                include = gr.Checkbox(value=True, label="Include masks accepted unchanged from the model",
                                      elem_id="export-include")
                go = gr.Button("Export", variant="primary", elem_id="export-button")
                result = gr.File(label="Download", elem_id="export-file", interactive=False)
                export_msg = gr.Markdown(elem_id="export-message")

        def dashboard_view() -> tuple:
            data = studio.dashboard()
            done = [r for r in data["rounds"] if r["status"] == "done"]
            return (dice_curve_svg(done, data["projection"]), figures_html(data), rounds_table(data["rounds"]),
                    annotators_table(data["annotators"]))

        def do_export(fmt_value: str, include_value: bool) -> tuple:
            """The Export button, and `/export` for gradio_client (which downloads the zip)."""
            try:
                path, message = studio.export(fmt_value, include_value)
            except Exception as exc:  # noqa: BLE001 - e.g. nothing labeled yet: say so, do not crash the tab
                return None, f"**Export failed:** {html.escape(str(exc))}"
            return str(path), message

        def do_retrain(request: gr.Request) -> str:
            return studio.retrain_now(who(request))

        def set_target(value: float | None, request: gr.Request) -> str:
            try:
                return f"Target val Dice set to {studio.set_target_dice(value, who(request)):.2f}."
            except ValueError as exc:
                return f"**{html.escape(str(exc))}**"

        outputs = [curve, figures, rounds, people]
        demo.load(dashboard_view, outputs=outputs, api_visibility="private")
        refresh.click(dashboard_view, outputs=outputs, api_visibility="private")
        dash_tab.select(dashboard_view, outputs=outputs, api_visibility="private")
        gr.Timer(5.0).tick(dashboard_view, outputs=outputs, api_visibility="private", show_progress="hidden")
        retrain.click(do_retrain, outputs=retrain_msg, api_name="retrain_now")
        target.submit(set_target, inputs=target, outputs=retrain_msg, api_visibility="private").then(
            dashboard_view, outputs=outputs, api_visibility="private")
        go.click(do_export, inputs=[fmt, include], outputs=[result, export_msg], api_name="export")

        # -- the same actions as named API endpoints (gradio_client) ---------------------------------------------
        def api_task(request: gr.Request) -> dict:
            return studio.task(who(request))

        def api_accept(view: str, mask_png: Optional[str] = None, request: gr.Request = None) -> dict:
            return studio.accept(who(request), as_text(view, "view"), as_text(mask_png, "mask_png", True) or None)

        def api_no_finding(view: str, request: gr.Request = None) -> dict:
            return studio.no_finding(who(request), as_text(view, "view"))

        def api_tag(view: str, present: bool = True, request: gr.Request = None) -> dict:
            return studio.tag_only(who(request), as_text(view, "view"), present)

        def api_skip(view: str, request: gr.Request = None) -> dict:
            return studio.skip(who(request), as_text(view, "view"))

        def api_undo(save: int | None = None, request: gr.Request = None) -> dict:
            return studio.undo(who(request), save)

        def api_refine(view: str, positive: str = "[]", negative: str = "[]", box: str = "null",
                       request: gr.Request = None) -> dict:
            return studio.refine(who(request), as_text(view, "view"), as_json(positive, "positive"),
                                 as_json(negative, "negative"), as_json(box, "box"))

        def api_dashboard(request: gr.Request) -> dict:
            who(request)  # refuses a request without a login when the server has --auth
            return studio.dashboard()

        for fn, name in [(api_task, "task"), (api_accept, "accept"), (api_no_finding, "no_finding"),
                         (api_tag, "tag"), (api_skip, "skip"), (api_undo, "undo"), (api_refine, "refine"),
                         (api_dashboard, "dashboard")]:
            gr.api(refused(fn), api_name=name)
    return demo


def dice_curve_svg(rounds: list[dict], projection: dict | None = None, width: int = 560, height: int = 300) -> str:
    """Validation Dice against the number of masks trained on, one point per finished round (inline SVG), with the
    fitted learning curve (dashed) and the target Dice (dotted) when the dashboard has a projection."""
    points = sorted((r["masks"], r["val_dice"], r["round"]) for r in rounds  # by masks: undos can lower the count
                    if r["val_dice"] is not None and r["masks"] is not None and r["published"])
    held_back = [(r["masks"], r["val_dice"], r["round"]) for r in rounds
                 if r["val_dice"] is not None and r["masks"] is not None and not r["published"]]
    title = "<div style='font-weight:600;margin-bottom:4px'>Validation Dice vs. masks used</div>"
    if not (points or held_back):
        return title + ("<div id='dice-empty' style='padding:40px;border:1px dashed #999;border-radius:6px'>"
                        "No finished round with a validation score yet.</div>")
    left, right, top, bottom = 48, 16, 12, 36
    fit = (projection or {}).get("fit")
    if fit:
        title = title.replace("</div>", "<span style='font-weight:400;font-size:12px'> · dashed: fitted curve (an "
                                         "estimate) · dotted: target Dice</span></div>", 1)
    masks_now = max(max(p[0] for p in points + held_back), 1)
    estimate = (projection or {}).get("estimate")
    x_max = max(masks_now, min(estimate, 3 * masks_now) if fit and estimate else 0) * 1.05
    sx = lambda x: left + (width - left - right) * x / x_max  # noqa: E731
    sy = lambda y: top + (height - top - bottom) * (1 - y)  # noqa: E731
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' class='dice-curve'>"]
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f"<line x1='{left}' x2='{width - right}' y1='{sy(tick):.1f}' y2='{sy(tick):.1f}' "
                     f"stroke='#ccc' stroke-width='0.5'/><text x='{left - 6}' y='{sy(tick) + 4:.1f}' "
                     f"text-anchor='end' font-size='11' fill='currentColor'>{tick:.2f}</text>")
    for tick in _ticks(x_max):
        parts.append(f"<text x='{sx(tick):.1f}' y='{height - bottom + 16}' text-anchor='middle' font-size='11' "
                     f"fill='currentColor'>{tick}</text>")
    parts.append(f"<text x='{(left + width) / 2}' y='{height - 4}' text-anchor='middle' font-size='12' "
                 f"fill='currentColor'>masks used for training</text>")
    if fit:
        target = projection["target"]
        parts.append(f"<line class='target' x1='{left}' x2='{width - right}' y1='{sy(target):.1f}' "
                     f"y2='{sy(target):.1f}' stroke='#43a047' stroke-dasharray='2,3'><title>target Dice {target:.2f}"
                     f"</title></line>")
        xs = np.linspace(min(p[0] for p in points), x_max, 60)
        ys = np.clip(CurveFit(**fit).dice_at(xs), 0, 1)
        fitted = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(zip(xs, ys)))
        parts.append(f"<path class='fitted' d='{fitted}' fill='none' stroke='#888' stroke-width='1.5' "
                     f"stroke-dasharray='5,4'><title>fitted learning curve (an estimate)</title></path>")
    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y, _) in enumerate(points))
    parts.append(f"<path d='{path}' fill='none' stroke='#1e88e5' stroke-width='2'/>")
    for x, y, rnd in points:
        parts.append(f"<circle class='point' cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='4.5' fill='#1e88e5'>"
                     f"<title>round {rnd}: {x} masks, Dice {y:.3f}</title></circle>")
    for x, y, rnd in held_back:  # hollow: trained, scored worse than the model serving then, not published
        parts.append(f"<circle class='held-back' cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='4.5' fill='none' "
                     f"stroke='#e53935' stroke-width='1.5'><title>round {rnd}: {x} masks, Dice {y:.3f}, not "
                     f"published</title></circle>")
    parts.append("</svg>")
    return title + "".join(parts)


def _ticks(x_max: float) -> list[int]:
    step = max(1, round(x_max / 5))
    return list(range(0, int(x_max) + 1, step))


def figures_html(data: dict) -> str:
    """The key numbers as a small table."""
    labels, effort, queue, val = data["labels"], data["effort"], data["queue"], data["validation"]
    last = data["training"]["latest_round"]
    auc = next((r["presence_auc"] for r in reversed(data["rounds"])  # the serving model's, not a held-back round's
                if r["presence_auc"] is not None and r["published"]), None)
    rows = [
        ("Serving", data["model"]["note"]),
        ("Training", data["training"]["line"] + f" (a round every {data['training']['round_every']} new labels"
         + (f", the first after {first}" if (first := data["training"]["first_round"]) else "")
         + ("; rounds train the image view too" if data["training"]["image_view"] else "") + ")"),
        ("Last round", "none yet" if last is None else
         f"#{last['round']} {last['status']}" + (f": {last['error']}" if last["error"] else "")
         + (f"; {last['note']}" if last["note"] else "")),
        ("Presence AUC (val)", "—" if auc is None else f"{auc:.3f}"),
        ("Labels (pool)", f"{labels['masks']} masks · {labels['no_finding']} no finding · {labels['tagged']} "
                          f"tagged · {labels['unlabeled']} unlabeled, of {labels['pool']} pool images"
                          + (f" ({labels['other_splits']} more in val/test)" if labels["other_splits"] else "")),
        ("Effort saved", "no saves yet" if not effort["reviews"] else
         f"mean Dice {effort['mean_dice']:.3f} between the mask shown and the mask saved over {effort['reviews']} "
         f"saves; {effort['unchanged']} accepted unchanged"),
        ("How many more?", projection_line(data["projection"])),
        ("Queue", f"{queue['left']} left · {queue['scored_by_model']} ranked by the model · {queue['leased']} "
                  f"being worked on · order: {queue['ordered_by']}"),
        ("Validation set", val["source"]),
        ("Conflicts", conflicts_line(data["conflicts"])),
    ]
    body = "".join(f"<tr><th style='text-align:left;padding-right:12px;vertical-align:top'>{html.escape(k)}</th>"
                   f"<td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def projection_line(projection: dict) -> str:
    """The masks the fitted learning curve says the target needs, said as the estimate it is."""
    head = f"Target val Dice {projection['target']:.2f}: "
    if projection["estimate"] is None:
        return head + projection["why"]
    high = "beyond reach" if projection["high"] is None else f"{projection['high']:.0f}"
    spread = ("most refits to noise like the val figures' never reach it" if projection["low"] is None
              else f"80% range {projection['low']:.0f} to {high}")  # None: infinite
    return (head + f"about {projection['estimate']:.0f} masks ({spread}; {projection['masks_now']} now), an "
            f"estimate from a learning curve fitted to {projection['rounds']} rounds that levels off at "
            f"{projection['fit']['plateau']:.3f}")


def conflicts_line(conflicts: list[dict]) -> str:
    """Saves made over a version their annotator never saw: both versions are kept, a person should look."""
    if not conflicts:
        return "none"
    listed = ", ".join(f"{c['name']} v{c['version']} by {c['annotator']} over v{c['over_version']}"
                       for c in conflicts[:10])
    more = f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
    return f"{len(conflicts)} saves over a version their annotator never saw (both kept): {listed}{more}"


def rounds_table(rounds: list[dict]) -> Any:
    header = ["round", "status", "masks", "labels", "val_dice", "presence_auc", "model", "published", "started",
              "trained_by", "error", "note"]
    return gr.Dataframe(value=[[r[k] for k in header] for r in reversed(rounds)] or None, headers=header)


def annotators_table(rows: list[dict]) -> Any:
    header = ["annotator", "total", "drawn", "accepted", "no_finding", "tags"]
    return gr.Dataframe(value=[[r[k] for k in header] for r in rows] or None, headers=header)
