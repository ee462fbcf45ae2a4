"""CAM-threshold calibration on BUSI val lesions: one evaluate pass per threshold against
model.calibrate.threshold_scores (nineteenth session).

    python benchmarks/results/decode_speed_probe/calib_bench.py RUN/model.pt
"""
import sys, time, torch
ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
MODEL = sys.argv[1]  # a model.pt of `adasam train` (the session: seed 0 default)
torch.set_num_threads(1)
from model.backbones import build_backbone, backbone_view
from model.cache import model_inputs, DEFAULT_CACHE_DIR
from model.dataset import load_data_folder, load_items
from model.adasam import load_checkpoint
from model.evaluate import evaluate
from model.calibrate import threshold_scores, CAM_THRESHOLDS
base = build_backbone("litemedsam")
folder = load_data_folder(str(ROOT.parent / "shared" / "datasets" / "busi"))
cache = model_inputs(base, 0, DEFAULT_CACHE_DIR)
val = [i for i in load_items(folder.split("val"), cache, with_images=True) if i.mask.any()]
model, _ = load_checkpoint(MODEL, backbone_view(base))
model.eval()
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
