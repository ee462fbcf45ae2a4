"""Semi-supervised ADA-SAM training (and the supervised baseline) on cached embeddings.

Per step, from three pools of images:
- masked (target present): the decoder learns from a box prompt, either the mask's own box with jitter or the
  model's current CAM box (so it learns to cope with loose automatic prompts); the CAM itself is supervised by the
  mask at CAM resolution. Both losses flow through the shared adapter: the gradient feedback.
- tagged (present / absent, masked images included): cross-entropy for the presence classifier.
- unlabeled: an EMA teacher prompts each image with its CAM box and predicts a pseudo-mask on the clean embedding;
  the student sees a perturbed embedding (channel dropout + noise) and learns to agree (confidence-weighted),
  ramped up over the first third of training. Images the teacher thinks empty are left out.

`method="supervised"` trains the decoder alone from whole-image boxes (no classifier, no CAM). `"meanteacher"` is
the standard semi-supervised baseline on the same backbone: the supervised setup plus the consistency term above,
with the teacher prompted by the whole image and no presence gating, so it isolates what the classifier/CAM add.

The validation images pick the checkpoint (`model.pt`); `last.pt` holds what resuming needs. Seeded and
deterministic on a given machine.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from model.adasam import AdaSam, AdaSamConfig, build_adasam, load_checkpoint, save_checkpoint, whole_box
from model.calibrate import calibrate, calibrate_presence
from model.evaluate import Item, evaluate
from model.inference import valid_grid
from model.losses import cam_loss, consistency_loss, segmentation_loss
from model.preprocess import mask_box, preprocess_mask


DECODER_ONLY = ("supervised", "meanteacher")  # methods without classifier or CAM: whole-image prompts


@dataclass
class TrainConfig:
    steps: int = 200  # total, warm-up included; on BUSI at 10% masks val Dice peaked near step 100-150
    batch_masked: int = 4  # images through the decoder per step (the expensive part: ~160 ms each)
    batch_cam: int = 12  # masked positives whose CAM is supervised per step (cheap: ~12 ms each)
    warmup_steps: int = 0  # first steps train only the CAM/classifier path, so the decoder meets useful CAM boxes
    batch_unlabeled: int = 4
    batch_tagged: int = 16
    lr_decoder: float = 5e-5
    lr_heads: float = 1e-3
    weight_decay: float = 1e-4
    box_jitter: float = 0.1  # max shift/resize of a mask box, as a fraction of its side
    cam_prompt_prob: float = 0.5  # share of masked samples prompted by the model's own CAM box
    cam_loss_weight: float = 1.0
    consistency_weight: float = 1.0
    ema_decay: float = 0.99
    perturb_dropout: float = 0.2
    perturb_noise: float = 0.1
    eval_every: int = 50
    seed: int = 0
    use_unlabeled: bool = True
    freeze_adapter: bool = False  # ablation: no gradient feedback through the shared module
    calibrate: bool = True  # after training, pick the CAM threshold on val (model.calibrate); False: keep it


@dataclass
class TrainingData:
    masked: list[Item]
    tagged: list[Item]  # every image with an image-level tag (masked ones included)
    unlabeled: list[Item]  # images without a mask (tagged or not)
    val: list[Item]


class Trainer:
    def __init__(self, model: AdaSam, config: TrainConfig, data: TrainingData, out: Path,
                 log: Callable[[str], None] = print) -> None:
        self.model, self.config, self.data, self.out, self.log = model, config, data, Path(out), log
        self.rng = np.random.default_rng(config.seed)
        self.size = model.image_size
        self.supervised = model.config.method in DECODER_ONLY  # decoder only, whole-image boxes
        self.mean_teacher = model.config.method == "meanteacher"
        self.positives = [i for i in data.masked if i.mask.any()]
        self.seg_items = data.masked if self.supervised else self.positives
        if not self.seg_items:
            raise ValueError("no masked image to train the decoder on" if self.supervised
                             else "no masked image containing the target: ADA-SAM needs at least one")
        self.targets = {i.id: preprocess_mask(i.mask, self.size) for i in data.masked}
        groups = [{"params": model.backbone.mask_decoder.parameters(), "lr": config.lr_decoder}]
        if not self.supervised:
            if config.freeze_adapter:
                model.adapter.requires_grad_(False)
            else:
                groups.append({"params": model.adapter.parameters(), "lr": config.lr_heads})
            groups.append({"params": model.classifier.parameters(), "lr": config.lr_heads})
            lora = [p for n, p in model.backbone.image_encoder.named_parameters() if p.requires_grad]
            if lora:
                groups.append({"params": lora, "lr": config.lr_heads})
        else:
            model.adapter.requires_grad_(False)
            model.classifier.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
        self.teacher = copy.deepcopy(model).eval() if self._semi_supervised else None
        self.step = 0
        self.best = {"score": -math.inf, "step": 0}
        self.history: list[dict] = []

    @property
    def _semi_supervised(self) -> bool:
        return ((not self.supervised or self.mean_teacher) and self.config.use_unlabeled
                and bool(self.data.unlabeled))

    # -- batches -----------------------------------------------------------------------------------------------
    def _pick(self, items: list[Item], count: int) -> list[Item]:
        return [items[i] for i in self.rng.choice(len(items), size=min(count, len(items)), replace=False)]

    def _jittered_box(self, item: Item) -> np.ndarray:
        target = self.targets[item.id][0]
        h, w = item.geometry.resized
        box = mask_box(target)
        if box is None:
            return whole_box((h, w))
        box = box + np.array([0, 0, 1, 1], np.float32)
        side = np.array([box[2] - box[0], box[3] - box[1]] * 2, np.float32)
        box = box + self.rng.uniform(-1, 1, 4).astype(np.float32) * self.config.box_jitter * side
        return np.clip(box, 0, [w, h, w, h]).astype(np.float32)

    def _target(self, items: list[Item], size: int) -> torch.Tensor:
        masks = torch.stack([self.targets[i.id] for i in items]).to(self.model.device)
        return masks if size == self.size else (F.interpolate(masks, size=(size, size), mode="area") >= 0.5).float()

    # -- one step ----------------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimiser step; the first `warmup_steps` train only the cheap CAM/classifier path (no decoder)."""
        model, cfg = self.model, self.config
        model.train()
        warmup = not self.supervised and self.step < cfg.warmup_steps
        losses: dict[str, torch.Tensor] = {}
        batch = self._pick(self.seg_items, max(cfg.batch_masked, 0 if self.supervised else cfg.batch_cam))
        seg_batch = batch[:cfg.batch_masked]
        features = model.features(torch.stack([i.embedding for i in batch]))
        hw = [i.geometry.resized for i in seg_batch]
        if not model.config.cam_prompted:
            boxes = torch.as_tensor(np.stack([whole_box(h) for h in hw]))
        if not self.supervised:
            grid = features.shape[-1]
            cams, _ = model.cam(features, valid_grid([i.geometry for i in batch], grid), create_graph=True)
            cam_target = F.adaptive_avg_pool2d(self._target(batch, self.size), grid)[:, 0]
            losses["cam"] = cfg.cam_loss_weight * cam_loss(cams, cam_target)
            if model.config.cam_prompted and not warmup:
                cam_boxes, _ = model.auto_boxes(cams[:len(seg_batch)].detach(), hw)
                use_cam = self.rng.random(len(seg_batch)) < cfg.cam_prompt_prob
                boxes = torch.as_tensor(np.stack([cam_boxes[k].numpy() if use_cam[k] else self._jittered_box(item)
                                                  for k, item in enumerate(seg_batch)]))
        if not warmup:
            logits, _ = model.segment(features[:len(seg_batch)], boxes)
            losses["seg"] = segmentation_loss(logits, self._target(seg_batch, logits.shape[-1]))
        if not self.supervised and self.data.tagged and model.config.has_negatives:
            tagged = self._pick(self.data.tagged, cfg.batch_tagged)
            cls_logits = model.classifier(model.features(torch.stack([i.embedding for i in tagged])))
            losses["cls"] = F.cross_entropy(cls_logits, torch.tensor([int(i.tag) for i in tagged],
                                                                     device=cls_logits.device))
        if self._semi_supervised and not warmup:
            ramp = min(1.0, (self.step - cfg.warmup_steps) / max(1, (cfg.steps - cfg.warmup_steps) / 3))
            losses.update({k: ramp * cfg.consistency_weight * v for k, v in self._consistency().items()})
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        if self.teacher is not None:
            self._update_teacher()
        self.step += 1
        return {k: float(v.detach()) for k, v in losses.items()}

    def _consistency(self) -> dict[str, torch.Tensor]:
        cfg, teacher = self.config, self.teacher
        batch = self._pick(self.data.unlabeled, cfg.batch_unlabeled)
        embeddings = torch.stack([i.embedding for i in batch])
        geometries = [i.geometry for i in batch]
        with torch.no_grad():
            t_features = teacher.features(embeddings)
        if self.mean_teacher:  # no classifier: whole-image prompts, every image kept
            boxes = torch.as_tensor(np.stack([whole_box(g.resized) for g in geometries]))
            t_present = torch.ones(len(batch), device=t_features.device)
        else:
            t_cams, t_logits = teacher.cam(t_features, valid_grid(geometries, embeddings.shape[-1]))
            boxes, _ = teacher.auto_boxes(t_cams, [g.resized for g in geometries])
            t_present = t_logits.softmax(1)[:, 1]
        boxes = boxes.to(t_features.device)
        with torch.no_grad():
            t_masks = torch.sigmoid(teacher.segment(t_features, boxes)[0])
        noise = torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(int(self.rng.integers(2**31))))
        perturbed = F.dropout2d(embeddings, cfg.perturb_dropout) + cfg.perturb_noise * embeddings.std() * noise
        s_features = self.model.features(perturbed)
        out = {}
        gated = self.model.config.has_negatives and not self.mean_teacher
        keep = t_present > 0.5 if gated else torch.ones_like(t_present, dtype=torch.bool)
        if keep.any():
            s_logits, _ = self.model.segment(s_features[keep], boxes[keep])
            out["consistency"] = consistency_loss(s_logits, t_masks[keep])
        if gated:
            s_present = self.model.classifier(s_features).softmax(1)[:, 1]
            out["cls_consistency"] = F.binary_cross_entropy(s_present.clamp(1e-5, 1 - 1e-5), t_present)
        return out

    @torch.no_grad()
    def _update_teacher(self) -> None:
        decay = self.config.ema_decay
        student = dict(self.model.named_parameters())
        for name, parameter in self.teacher.named_parameters():
            if student[name].requires_grad:
                parameter.mul_(decay).add_(student[name].detach(), alpha=1 - decay)

    # -- evaluation, checkpoints, resume ----------------------------------------------------------------------
    def validate(self) -> dict:
        if not self.data.val:
            return {}
        summary, _ = evaluate(self.model.eval(), self.data.val, with_hd95=False)
        return summary

    def val_score(self, summary: dict) -> float:
        """Checkpoint selection: mean lesion Dice on val with automatic prompts, before presence gating.

        Gated Dice can be 0 at every evaluation (a classifier that keeps every probability under the gate until it
        is calibrated after training), which would keep the first checkpoint; prompts and decoder are judged here,
        the gate is set afterwards (model.calibrate). Equal scores keep the later checkpoint."""
        if not summary:
            return float(self.step)  # no validation images: the latest model wins
        value = summary["dice_lesion_ungated"] if summary["n_lesion"] else summary["dice_all"]
        return -1.0 if math.isnan(value) else value

    def save_resume_state(self) -> None:
        extra = {"step": self.step, "optimizer": self.optimizer.state_dict(), "best": self.best,
                 "history": self.history, "rng": self.rng.bit_generator.state,
                 "torch_rng": torch.random.get_rng_state(), "train_config": asdict(self.config)}
        if self.teacher is not None:
            extra["teacher"] = self.teacher.trainable_state()
        save_checkpoint(self.model, self.out / "last.pt", extra)

    def load_resume_state(self, path: Path) -> None:
        payload = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(payload["state"], strict=False)
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.teacher is not None and "teacher" in payload:
            self.teacher.load_state_dict(payload["teacher"], strict=False)
        self.step, self.best, self.history = payload["step"], payload["best"], payload["history"]
        self.rng.bit_generator.state = payload["rng"]
        torch.random.set_rng_state(payload["torch_rng"])

    def run(self, progress: Callable[[int, int], None] | None = None) -> dict:
        cfg = self.config
        started = time.time()
        losses_since: list[dict] = []
        while self.step < cfg.steps:
            losses_since.append(self.train_step())
            if progress:
                progress(self.step, cfg.steps)
            warm = not self.supervised and self.step <= cfg.warmup_steps
            if not warm and ((self.step - cfg.warmup_steps) % cfg.eval_every == 0 or self.step == cfg.steps):
                summary = self.validate()
                score = self.val_score(summary)
                mean_losses = {k: float(np.mean([d[k] for d in losses_since if k in d]))
                               for k in {k for d in losses_since for k in d}}
                losses_since = []
                record = {"step": self.step, "score": score, "losses": mean_losses,
                          "val": {k: v for k, v in summary.items() if isinstance(v, (int, float))},
                          "elapsed_s": time.time() - started}
                self.history.append(record)
                self.log(json.dumps(record, default=float))
                if score >= self.best["score"]:
                    self.best = {"score": score, "step": self.step, "val": record["val"]}
                    save_checkpoint(self.model, self.out / "model.pt", {"val": summary, "step": self.step})
                self.save_resume_state()
        self.calibrate_best()
        return self.best

    def calibrate_best(self) -> None:
        """Load the val-picked weights (model.pt) into the model, choose its CAM and presence thresholds on val and
        store them in model.pt; the choice is recorded in `self.best["calibration"]`. Idempotent, so resuming a
        finished run redoes it."""
        path = self.out / "model.pt"
        if not (self.config.calibrate and self.data.val and path.exists()):
            return
        payload = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(payload["state"], strict=False)
        # the checkpoint's val summary was taken at the current threshold: no need to evaluate that one again
        measured = {self.model.config.cam_threshold: payload.get("val", {}).get("dice_lesion_ungated")}
        report = calibrate(self.model.eval(), self.data.val, measured)
        report.update(calibrate_presence(self.model, self.data.val))
        if report:
            extra = {k: v for k, v in payload.items() if k not in ("format", "config", "state")}
            save_checkpoint(self.model, path, extra)
            self.best["calibration"] = report
            self.log(json.dumps({"calibration": report}))


def build_training_model(config: AdaSamConfig, seed: int, backbone=None, init: str | Path | None = None) -> AdaSam:
    """A fresh model (seeded), or one warm-started from an earlier model's trainable weights (`init`)."""
    torch.manual_seed(seed)
    if init is not None:
        model, _ = load_checkpoint(init, backbone)
        model.config = config
        return model
    return build_adasam(config, backbone)


def detect_negatives(data: TrainingData) -> bool:
    """Whether any tagged image is target-absent: without one the classifier has nothing to contrast."""
    return any(i.tag is False for i in data.tagged)
