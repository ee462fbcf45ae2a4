"""CAM-threshold calibration on BUSI val lesions: one evaluate pass per threshold against
model.calibrate.threshold_scores (nineteenth session).

    python benchmarks/results/decode_speed_probe/calib_bench.py RUN/model.pt
"""
import sys
import time

from probe_setup import model_and_val

MODEL = sys.argv[1]  # a model.pt of `adasam train` (the session: seed 0 default)
from model.evaluate import evaluate
from model.calibrate import threshold_scores, CAM_THRESHOLDS
model, val = model_and_val(MODEL)
val = [i for i in val if i.mask.any()]
for view in (True, False):
    if not view:
        model.image_view = None
    t = time.perf_counter(); old = {}
    for th in CAM_THRESHOLDS:
        model.config.cam_threshold = th
        old[th] = evaluate(model, val, with_hd95=False)[0]["dice_lesion_ungated"]
    t_old = time.perf_counter() - t
    t = time.perf_counter(); new = threshold_scores(model, val, list(CAM_THRESHOLDS)); t_new = time.perf_counter() - t
    print("view" if view else "cam alone", f"old {t_old:.1f}s new {t_new:.1f}s",
          {k: (round(old[k], 5), round(new[k], 5)) for k in old})
