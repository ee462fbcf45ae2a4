"""Dice of the averaged probabilities of views trained on the same masks with different seeds (probe.py ... SAVE).

    PYTHONPATH=. python benchmarks/results/view_features_probe/ensemble.py MASK_SEED FILE.npz FILE.npz ...
"""
import runpy
import sys
from pathlib import Path

import numpy as np
import torch

mask_seed, files = sys.argv[1], sys.argv[2:]
sys.argv = [sys.argv[0], "0", mask_seed, "0.1", "1", mask_seed]  # what probe.py reads: K=0, these masks
probe = runpy.run_path(str(Path(__file__).with_name("probe.py")), run_name="probe")
val_lesion = [i for i in probe["val"] if i.mask is not None and i.mask.any()]
loaded = [np.load(f) for f in files]
for name, items in (("val", val_lesion), ("held", probe["held_out"])):
    singles = [probe["lesion_dice"](None, None, items, torch.from_numpy(d[name].astype(np.float32))) for d in loaded]
    mean = torch.from_numpy(np.mean([d[name].astype(np.float32) for d in loaded], 0))
    print(name, "singles", [round(s, 4) for s in singles], "mean of singles", round(float(np.mean(singles)), 4),
          "ensemble", round(probe["lesion_dice"](None, None, items, mean), 4))
