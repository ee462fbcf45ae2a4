"""The model the web app serves: the untrained backbone until the trainer publishes one, then the newest, swapped in
between requests, with the embeddings of the images being worked on at hand."""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from annotation import Store
from model.adasam import (AdaSam, AdaSamConfig, CheckpointError, build_adasam, checkpoint_problem,
                          load_checkpoint)
from model.backbones import backbone_view, build_backbone
from model.cache import EmbeddingCache
from model.image_view import image_input
from model.inference import Predictor
from model.preprocess import Geometry

PRETRAINED = "pretrained"


class ModelSlot:
    """The model predictions come from: the untrained backbone until the trainer publishes a version, then the
    newest one, swapped in between requests."""

    def __init__(self, store: Store, backbone: str, cache_dir: str | Path) -> None:
        self.store = store
        self.spec = backbone
        self.base = build_backbone(backbone)
        self.cache = EmbeddingCache(cache_dir, self.base)
        self.lock = threading.RLock()  # one model call at a time: 2 cores, and Predictor.refine keeps state
        self._swapping = threading.Lock()  # one model load at a time: two at once could swap the older in last
        self._refused: str | None = None  # the version whose load failed (not tried again at every request)
        self.version = PRETRAINED
        self.model: AdaSam = build_adasam(AdaSamConfig(backbone=backbone, method="supervised", cascade=0),
                                          backbone_view(self.base)).eval()
        self.predictor = Predictor(self.model)
        self.metrics: dict[str, Any] = {}
        self._embeddings: OrderedDict[int, tuple[torch.Tensor, Geometry]] = OrderedDict()
        self.unusable: str | None = None  # why the newest published model cannot be served, if it cannot
        self.refresh()

    @property
    def trained(self) -> bool:
        return self.version != PRETRAINED

    def refresh(self) -> bool:
        """Swap in the newest published model; True when it changed. Called before every request's model work:
        the check is one indexed query (well under a millisecond)."""
        info = self.store.latest_model()
        if info is None or info.version == self.version:
            return False
        with self._swapping:
            info = self.store.latest_model()  # again: another request may have swapped it in meanwhile
            if info.version in (self.version, self._refused):
                return False
            self.unusable = checkpoint_problem(info.checkpoint_path)
            if self.unusable:  # e.g. trained by an earlier version: keep serving what we have until the next round
                return False
            try:
                model, _ = load_checkpoint(info.checkpoint_path, backbone_view(self.base))
            except CheckpointError as exc:  # e.g. trained on another backbone than this server's: said on the
                self.unusable, self._refused = str(exc), info.version  # dashboard, not raised at every request
                return False
            with self.lock:
                self.model, self.predictor = model.eval(), Predictor(model)
                self.version, self.metrics = info.version, dict(info.metrics)
            return True

    def embedding(self, image_id: int) -> tuple[torch.Tensor, Geometry]:
        """The cached embedding (computed now if the background embedder has not reached this image yet)."""
        with self.lock:
            hit = self._embeddings.get(image_id)
            if hit is None:
                pixels = self.store.load_image(image_id).astype(np.float32)  # float32: the key `adasam train` uses
                hit = self.cache.get(pixels)
                self._embeddings[image_id] = hit
                while len(self._embeddings) > 8:
                    self._embeddings.popitem(last=False)
            return hit

    def image_input(self, pixels: np.ndarray) -> torch.Tensor | None:
        """What the serving model's image view reads of an image's stored pixels (model.image_view), or None for a
        model without one. Call under `lock`, so the model cannot change between this and its prediction."""
        if self.model.image_view is None:
            return None
        return image_input(pixels.astype(np.float32))

    def note(self) -> str:
        if not self.trained:
            skipped = f" (the workspace's model cannot be used: {self.unusable})" if self.unusable else ""
            return ("Untrained backbone: no proposal and no CAM yet. Drag a box around the target (X), or + click its "
                    "middle (P), and SAM draws it, or press F for no finding; the next training round brings "
                    f"proposals{skipped}.")
        dice_text = self.metrics.get("dice_lesion")
        score = "" if dice_text is None or math.isnan(dice_text) else f", val Dice {dice_text:.3f}"
        newer = f"; the newest cannot be used: {self.unusable}" if self.unusable else ""
        return f"Model {self.version} (trained on {self.metrics.get('n_masks', '?')} masks{score}{newer})"
