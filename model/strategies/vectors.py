"""One vector per image for diversity strategies: its cached embedding averaged over the real (unpadded) image and
scaled to unit length, so distances compare content, not brightness or padding."""
from __future__ import annotations

import numpy as np
import torch

from model.inference import valid_grid
from model.preprocess import Geometry


def image_vector(embedding: torch.Tensor, geometry: Geometry) -> np.ndarray:
    """C x h x w embedding -> unit C-vector."""
    valid = valid_grid([geometry], embedding.shape[-1])[0].to(embedding.device)
    pooled = (embedding.float() * valid).sum((1, 2)) / valid.sum().clamp_min(1)
    return (pooled / pooled.norm().clamp_min(1e-12)).cpu().numpy()
