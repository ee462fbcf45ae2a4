"""Which box the first click after a proposal edits: the proposal's prompt box (what the Annotate tab sends) or the
proposal mask's own box (what the server takes when no box is sent; effort.py measured this path until 2026-12-05).

Run from the repository root: python benchmarks/results/refine_probe/start_box_probe.py VARIANT RUN SPLIT
VARIANT: prompt (effort.py as it is) | mask (the task's box withheld, so the first redraw starts from the mask's box;
every later redraw edits the box the one before was given, as in both variants)."""
import json
import sys

sys.path.insert(0, "benchmarks")
import effort  # noqa: E402
from app.studio import Studio  # noqa: E402

VARIANT, MODEL, SPLIT = sys.argv[1:4]
if VARIANT == "mask":
    shown = Studio.task
    Studio.task = lambda self, *a, **k: {**shown(self, *a, **k), "box": None}
args = effort.argparse.Namespace(data="../shared/datasets/busi", model=MODEL, backbone="litemedsam",
                                 cache=str(effort.Path.home() / ".cache" / "adasam" / "embeddings"),
                                 split=SPLIT, limit=0, starts=["proposal"], json=None, quick=False)
result = effort.run(args)
print(json.dumps({"variant": VARIANT, "model": MODEL.rstrip("/").split("/")[-1], "split": SPLIT,
                  **result["starts"]["proposal"]["summary"]}), flush=True)
