"""Browser-side latency of the Annotate tab, measured in headless Chromium against a real `adasam serve`.

- accept -> next: from the click on "Accept" to the next image drawn with its mask outline and CAM (the page's draw
  counter changes, then one animation frame so it is on screen).
- click -> refined mask: from a "+ point" click on the canvas to the mask SAM redrew being on screen.

Default: LiteMedSAM on a workspace seeded like the first run (BUSI pool + val when ../shared/datasets/busi exists,
else phantoms), embeddings cached beforehand (the figure the issue asks for), and an ADA-SAM model with untrained
heads registered so the CAM path runs exactly as after a training round. The trainer is not started: the numbers
are the UI's own. `--quick`: micro_random backbone on 24 generated phantoms (a CI smoke run, seconds).

    python benchmarks/ui_latency.py            # litemedsam, 30 accepts, 30 clicks
    python benchmarks/ui_latency.py --quick
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ACCEPT_JS = """async () => {
  const el = document.querySelector('[data-drawn]');
  const before = Number(el.dataset.drawn);
  const t0 = performance.now();
  document.querySelector('button[data-act=accept]').click();
  await new Promise((resolve) => {
    const watch = new MutationObserver(() => {
      if (Number(el.dataset.drawn) > before) { watch.disconnect(); resolve(); }
    });
    watch.observe(el, { attributes: true });
  });
  await new Promise((resolve) => requestAnimationFrame(() => resolve()));
  return performance.now() - t0;
}"""

CLICK_JS = """async ([fx, fy]) => {
  const el = document.querySelector('[data-drawn]');
  const canvas = document.querySelector('canvas.ann-canvas');
  const before = Number(el.dataset.refined || 0);
  const r = canvas.getBoundingClientRect();
  const at = { clientX: r.left + fx * r.width, clientY: r.top + fy * r.height, pointerId: 1, bubbles: true };
  const t0 = performance.now();
  canvas.dispatchEvent(new PointerEvent('pointerdown', at));
  canvas.dispatchEvent(new PointerEvent('pointerup', at));
  await new Promise((resolve) => {
    const watch = new MutationObserver(() => {
      if (Number(el.dataset.refined || 0) > before) { watch.disconnect(); resolve(); }
    });
    watch.observe(el, { attributes: true });
  });
  await new Promise((resolve) => requestAnimationFrame(() => resolve()));
  return performance.now() - t0;
}"""


def prepare(folder: Path, backbone: str, quick: bool) -> tuple[Path, str]:
    """A workspace, its embeddings cached, and an ADA-SAM model (untrained heads) registered for the CAM path."""
    from annotation import Store
    from app.seed import seed_workspace
    from app.testing import make_workspace
    from model.adasam import AdaSamConfig, build_adasam, save_checkpoint
    from model.backbones import build_backbone
    from model.cache import DEFAULT_CACHE_DIR, EmbeddingCache

    if quick:
        workspace = make_workspace(folder)
        cache_dir = folder / "cache"
    else:
        workspace = folder / "workspace"
        with Store(workspace) as store:
            print(seed_workspace(store, progress=False))
        cache_dir = DEFAULT_CACHE_DIR
    base = build_backbone(backbone)
    with Store(workspace) as store:
        cache = EmbeddingCache(cache_dir, base)
        ids = [info.id for info in store.images(split="pool")]
        started = time.time()
        cache.get_many([store.load_image(i).astype("float32") for i in ids], progress=True)
        print(f"embeddings ready for {len(ids)} pool images ({cache.encoded} computed, {time.time() - started:.0f} s)")
        model = build_adasam(AdaSamConfig(backbone=backbone), base)
        path = workspace / "models" / "bench.pt"
        save_checkpoint(model, path)
        store.register_model("bench", path, {"n_masks": 0, "note": "untrained heads, for timing only"})
    return workspace, str(cache_dir)


def run(args: argparse.Namespace) -> dict:
    from playwright.sync_api import sync_playwright

    from app.testing import Server, launch_chromium

    backbone = "micro_random" if args.quick else args.backbone
    with tempfile.TemporaryDirectory(prefix="ui-latency-") as tmp:
        folder = Path(tmp)
        workspace, cache_dir = prepare(folder, backbone, args.quick)
        server = Server(workspace, folder / "serve.log", "--no-trainer", backbone=backbone, cache=cache_dir)
        try:
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(server.url)
                page.wait_for_selector("[data-image-id]:not([data-image-id=''])", timeout=120_000)
                accepts, clicks = [], []
                for i in range(args.warmup + args.n):
                    page.wait_for_timeout(args.think * 1000)  # an annotator looks before deciding
                    if i % 2 == 0:
                        page.keyboard.press("p")
                        point = (0.3 + 0.05 * (i % 5), 0.35 + 0.04 * (i % 4))
                        ms = page.evaluate(CLICK_JS, list(point))
                        if i >= args.warmup:
                            clicks.append(ms)
                    ms = page.evaluate(ACCEPT_JS)
                    if i >= args.warmup:
                        accepts.append(ms)
                browser.close()
        finally:
            server.stop()
    result = {
        "command": " ".join(["python", "benchmarks/ui_latency.py", *sys.argv[1:]]),
        "backbone": backbone, "n_accepts": len(accepts), "n_clicks": len(clicks), "think_s": args.think,
        "accept_to_next_ms": _summary(accepts), "click_to_mask_ms": _summary(clicks),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU" if not _cuda() else "with GPU",
    }
    return result


def _summary(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return {"n": len(values), "median": round(statistics.median(values), 1),
            "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 1), "min": round(ordered[0], 1),
            "max": round(ordered[-1], 1)}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="micro_random on generated phantoms (CI smoke)")
    parser.add_argument("--backbone", default="litemedsam")
    parser.add_argument("--n", type=int, default=None, help="timed accepts (default 30, quick 10)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--think", type=float, default=1.0, help="seconds between actions (default 1)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    args.n = args.n or (10 if args.quick else 30)
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    goal = result["accept_to_next_ms"].get("median", 0) <= 300
    print(f"accept -> next median {result['accept_to_next_ms'].get('median')} ms (goal <= 300 ms: "
          f"{'met' if goal else 'missed'}); click -> mask median {result['click_to_mask_ms'].get('median')} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
