"""Semi-supervised ADA-SAM training (and the decoder-only baselines) on cached embeddings (on images when LoRA trains
the encoder: AdaSam.embed).

ADA-SAM, per step, from four pools of images:
- masked (with or without the target): the classifier's map is supervised location by location by the mask at map
  resolution (BCE + Dice); randomly mirrored.
- tagged (present / absent, masked images included): the map's pooled logit learns presence (cross-entropy). Without
  any target-free image this term is skipped and the map learns from the masks alone, presence assumed.
- unlabeled: an EMA teacher's map on the clean embedding is the pseudo-target of the student's map on a perturbed
  one (channel dropout + noise), confidence-weighted and ramped up over the first third of the budget.
- a few masked positives go through the mask decoder prompted by the map's own box or a jittered mask box: their
  segmentation loss flows into the shared adapter the classifier reads (the gradient feedback), and into the
  decoder when `train_decoder` is set (off by default: the pretrained decoder given a good box is as good as a
  trained one, 0.908 vs 0.900 lesion Dice on BUSI test, and a frozen one costs a third of the time).

`method="supervised"` trains the decoder alone from whole-image boxes (no classifier, no map). `"meanteacher"` is
the standard semi-supervised baseline on the same backbone: the supervised setup plus a decoder consistency term on
unlabeled images, teacher prompted by the whole image, so it isolates what the classifier and its map add.

Every method has the same budget rule: evaluate on val every `eval_every` steps and stop after `patience`
evaluations without improvement (or at `steps`). The val-best weights are `model.pt`; `last.pt` holds what resuming
needs. Seeded and deterministic on a given machine.
"""
from __future__ import annotations

import copy
import json
import math
import time
import weakref
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from model.adasam import (AdaSam, AdaSamConfig, CheckpointError, build_adasam, load_checkpoint, read_checkpoint,
                          same_backbone, save_checkpoint, whole_box)
from model.calibrate import calibrate, calibrate_presence
from model.decoder import compiled_decoding
from model.device import training_dtype
from model.distributed import Ranks
from model.evaluate import Item, batch_inputs, evaluate
from model.image_view import ImageViewTraining, build_unet, fit, lesion_dice, mask_target
from model.inference import Predictor, valid_grid
from model.losses import consistency_loss, map_consistency_loss, map_loss, segmentation_loss
from model.preprocess import mask_box, preprocess_mask


DECODER_ONLY = ("supervised", "meanteacher")  # methods without classifier or CAM: whole-image prompts


@dataclass
class TrainConfig:
    steps: int = 3000  # at most; training normally stops earlier, when val stops improving (patience)
    eval_every: int = 50
    patience: int = 4  # evaluations without a better val score before stopping (0: run all `steps`)
    batch_masked: int = 2  # images through the decoder per step (the expensive part: ~0.2 s each)
    batch_cam: int = 8  # masked images whose map is supervised per step
    batch_unlabeled: int = 8
    batch_tagged: int = 16
    lr_decoder: float = 5e-5
    lr_heads: float = 1e-3
    weight_decay: float = 1e-4
    box_jitter: float = 0.1  # max shift/resize of a mask box, as a fraction of its side
    cam_prompt_prob: float = 0.5  # share of decoder samples prompted by the model's own map box
    consistency_weight: float = 1.0
    ema_decay: float = 0.99
    perturb_dropout: float = 0.2
    perturb_noise: float = 0.1
    seed: int = 0
    use_unlabeled: bool = True
    train_decoder: bool = False  # ADA-SAM: also train the mask decoder (the baselines always do)
    freeze_adapter: bool = False  # ablation: no gradient feedback through the shared module
    calibrate: bool = True  # after training, pick the CAM threshold on val (model.calibrate); False: keep it
    image_view: ImageViewTraining = field(default_factory=ImageViewTraining)  # a model with an image view: its budget
    view_self_training: bool = True  # a model with an image view: after training, the view learns again from the
    # masked images plus the model's own proposals for the unlabeled ones (Trainer.self_train_image_view)


@dataclass
class TrainingData:
    masked: list[Item]
    tagged: list[Item]  # every image with an image-level tag (masked ones included)
    unlabeled: list[Item]  # images without a mask (tagged or not)
    val: list[Item]


def data_identity(data: TrainingData) -> dict[str, list]:
    """Which images a run trains and validates on, and the tags it reads: what a resumed run must find again."""
    return {"masked": sorted(str(i.id) for i in data.masked), "val": sorted(str(i.id) for i in data.val),
            "unlabeled": sorted(str(i.id) for i in data.unlabeled),
            "tags": sorted([str(i.id), bool(i.tag)] for i in data.tagged)}


def _settings(train_config: dict) -> dict:
    """A TrainConfig's fields less the step budget (`--steps`, which also caps the image view's)."""
    return {k: v for k, v in train_config.items() if k not in ("steps", "image_view")}


class Trainer:
    """Trains `model` on `data`, writing model.pt / last.pt to `out`.

    Under torchrun (`ranks` from model.distributed.join) every rank draws the same global batches from the same seed
    and computes its share of each; DistributedDataParallel averages the gradients, each share's loss weighted so
    the sum is the global batch's loss. Rank 0 validates, checkpoints and logs; the others follow its decisions."""

    def __init__(self, model: AdaSam, config: TrainConfig, data: TrainingData, out: Path,
                 log: Callable[[str], None] = print, ranks: Ranks = Ranks()) -> None:
        self.model, self.config, self.data, self.out, self.log = model, config, data, Path(out), log
        self.ranks = ranks
        torch.set_flush_denormal(True)  # denormal floats late in a BUSI run: 1.3x slower CPU steps
        self.rng = np.random.default_rng(config.seed)
        self.size = model.image_size
        self.dtype = training_dtype(model.device)
        self.supervised = model.config.method in DECODER_ONLY  # decoder only, whole-image boxes
        self.mean_teacher = model.config.method == "meanteacher"
        self.positives = [i for i in data.masked if i.mask.any()]
        self.seg_items = data.masked if self.supervised else self.positives
        if not self.seg_items:
            raise ValueError("no masked image to train the decoder on" if self.supervised
                             else "no masked image containing the target: ADA-SAM needs at least one")
        self.targets = {i.id: preprocess_mask(i.mask, self.size) for i in data.masked}
        self.decoder_trained = self.supervised or config.train_decoder
        model.backbone.mask_decoder.requires_grad_(self.decoder_trained)
        groups = [{"params": model.backbone.mask_decoder.parameters(), "lr": config.lr_decoder}] \
            if self.decoder_trained else []
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
        self._losses = _StepLosses(self)
        if ranks.joined:  # find_unused_parameters: a rank whose share of a term is empty leaves its weights unused
            self._losses = torch.nn.parallel.DistributedDataParallel(self._losses, find_unused_parameters=True)
        self.teacher = copy.deepcopy(model).eval() if self._semi_supervised else None
        self.kept = model
        self.step = 0
        self.best = {"score": -math.inf, "step": 0}
        self.history: list[dict] = []
        self.image_view_report: dict | None = None  # set once the image view has trained (Trainer.train_image_view)
        self._calibrated_val_dice: float | None = None  # model.pt's val lesion Dice as its calibration measured it

    @property
    def _semi_supervised(self) -> bool:
        return ((not self.supervised or self.mean_teacher) and self.config.use_unlabeled
                and bool(self.data.unlabeled))

    # -- batches -----------------------------------------------------------------------------------------------
    def _pick(self, items: list[Item], count: int) -> list[Item]:
        """A global batch: the same on every rank (same seed, same draws)."""
        return [items[i] for i in self.rng.choice(len(items), size=min(count, len(items)), replace=False)]

    def _share(self, batch: list, *aligned) -> tuple:
        """This rank's share of a global batch (and of per-item arrays drawn for it), and the weight that makes
        the ranks' mean-reduced losses add up, after DDP's gradient averaging, to the global batch's mean loss."""
        weight = self.ranks.world * len(self.ranks.share(batch)) / max(1, len(batch))
        return (self.ranks.share(batch), *[self.ranks.share(a) for a in aligned], weight)

    def _jittered_box(self, item: Item) -> np.ndarray:
        target = self.targets[item.id][0]
        h, w = item.geometry.resized
        box = mask_box(target)
        if box is None:
            return whole_box((h, w))
        side = np.array([box[2] - box[0], box[3] - box[1]] * 2, np.float32)
        box = box + self.rng.uniform(-1, 1, 4).astype(np.float32) * self.config.box_jitter * side
        return np.clip(box, 0, [w, h, w, h]).astype(np.float32)

    def _target(self, items: list[Item], size: int) -> torch.Tensor:
        masks = torch.stack([self.targets[i.id] for i in items]).to(self.model.device)
        return masks if size == self.size else (F.interpolate(masks, size=(size, size), mode="area") >= 0.5).float()

    def _embeddings(self, items: list[Item]) -> torch.Tensor:
        """The items' model inputs (cached embeddings, or preprocessed images when the encoder trains) on the device.
        A bfloat16 step takes cached embeddings in bfloat16 and channels-last, the layout oneDNN's bf16 convolutions
        want: converted here once, not by autocast at every layer that reads them (a fifth of the step's time)."""
        if self.dtype == torch.float32 or self.model.encodes_live:
            return torch.stack([i.embedding for i in items]).to(self.model.device).float()
        inputs = torch.empty((len(items), *items[0].embedding.shape), dtype=self.dtype,
                             device=self.model.device).contiguous(memory_format=torch.channels_last)
        for row, item in zip(inputs, items):  # one pass: cast and transpose in the same copy
            row.copy_(item.embedding)
        return inputs

    def _ramp(self) -> float:
        """Unlabeled terms grow from 0 to full weight over the first three evaluations."""
        return min(1.0, self.step / (3 * self.config.eval_every))

    # -- one step ----------------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimiser step."""
        self.model.train()
        with torch.autocast(self.model.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            losses = self._losses()
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        if self.teacher is not None:
            self._update_teacher()
        self.step += 1
        return {k: float(v.detach()) for k, v in losses.items()}

    def _decoder_only_losses(self) -> dict[str, torch.Tensor]:
        """Supervised / mean teacher: the decoder from whole-image boxes (+ consistency on unlabeled images)."""
        model, cfg = self.model, self.config
        batch, weight = self._share(self._pick(self.seg_items, cfg.batch_masked))
        losses = {}
        if batch:
            boxes = torch.as_tensor(np.stack([whole_box(i.geometry.resized) for i in batch]))
            logits, _ = model.segment(model.features(self._embeddings(batch)), boxes)
            losses["seg"] = weight * segmentation_loss(logits, self._target(batch, logits.shape[-1]))
        if self._semi_supervised:
            consistency = self._decoder_consistency()
            if consistency is not None:
                losses["consistency"] = self._ramp() * cfg.consistency_weight * consistency
        return losses

    def _adasam_losses(self) -> dict[str, torch.Tensor]:
        model, cfg = self.model, self.config
        losses = {}
        batch = self._pick(self.data.masked, cfg.batch_cam)
        mirror = self.rng.random(len(batch)) < 0.5  # the map is a convolution: a mirrored image is a new example
        grid = model.grid
        batch, mirror, weight = self._share(batch, mirror)

        def flip(x: torch.Tensor) -> torch.Tensor:
            return torch.stack([t.flip(-1) if m else t for t, m in zip(x, mirror)])

        if batch:
            valid = flip(valid_grid([i.geometry for i in batch], grid)).to(model.device)
            target = flip(F.adaptive_avg_pool2d(self._target(batch, self.size), grid)[:, 0])
            location_logits = model.classifier.location_logits(model.features(flip(self._embeddings(batch))))
            losses["cam"] = weight * map_loss(location_logits, target, valid)
        if self.data.tagged and model.config.has_negatives:
            tagged, weight = self._share(self._pick(self.data.tagged, cfg.batch_tagged))
            if tagged:
                _, logits = model.cam(model.features(self._embeddings(tagged)),
                                      valid_grid([i.geometry for i in tagged], grid))
                tags = torch.tensor([int(i.tag) for i in tagged], device=logits.device)
                losses["cls"] = weight * F.cross_entropy(logits, tags)
        if self._semi_supervised:
            consistency = self._map_consistency()
            if consistency is not None:
                losses["consistency"] = self._ramp() * cfg.consistency_weight * consistency
        seg_batch = self._pick(self.positives, cfg.batch_masked)
        if self.decoder_trained or not cfg.freeze_adapter:  # else nothing the segmentation loss could train
            jittered = [self._jittered_box(i) for i in seg_batch]
            cam_draws = self.rng.random(len(seg_batch)) if model.config.cam_prompted else np.zeros(len(seg_batch))
            seg_batch, jittered, cam_draws, weight = self._share(seg_batch, jittered, cam_draws)
            if seg_batch:
                features = model.features(self._embeddings(seg_batch))
                hw = [i.geometry.resized for i in seg_batch]
                boxes = torch.as_tensor(np.stack(jittered))
                if model.config.cam_prompted:
                    with torch.no_grad():
                        cams, _ = model.cam(features, valid_grid([i.geometry for i in seg_batch], grid))
                    cam_boxes, fallbacks = model.auto_boxes(cams, hw)
                    use_cam = (np.asarray(cam_draws) < cfg.cam_prompt_prob) & ~np.array(fallbacks)
                    boxes[use_cam] = cam_boxes[use_cam]
                else:
                    boxes = torch.as_tensor(np.stack([whole_box(h) for h in hw]))
                logits, _ = model.segment(features, boxes)
                losses["seg"] = weight * segmentation_loss(logits, self._target(seg_batch, logits.shape[-1]))
        return losses

    def _perturbed(self, embeddings: torch.Tensor, seed: int) -> torch.Tensor:
        noise = torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(seed))
        return (F.dropout2d(embeddings, self.config.perturb_dropout)
                + self.config.perturb_noise * embeddings.std().detach() * noise.to(embeddings.device, embeddings.dtype))

    def _map_consistency(self) -> torch.Tensor | None:
        """The student's map on a perturbed embedding agrees with the EMA teacher's map on the clean one (None: this
        rank's share of the batch is empty)."""
        batch, weight = self._share(self._pick(self.data.unlabeled, self.config.batch_unlabeled))
        perturb_seed = int(self.rng.integers(2**31))
        if not batch:
            return None
        inputs = self._embeddings(batch)
        valid = valid_grid([i.geometry for i in batch], self.model.grid).to(self.model.device)
        with torch.no_grad():
            teacher_map, _ = self.teacher.cam(self.teacher.features(inputs), valid)
        perturbed = self._perturbed(self.model.embed(inputs), perturb_seed)  # the embedding is perturbed, not the image
        student = self.model.classifier.location_logits(self.model.adapter(perturbed))
        return weight * map_consistency_loss(student, teacher_map, valid)

    def _decoder_consistency(self) -> torch.Tensor | None:
        """Mean teacher: the student decoder on a perturbed embedding agrees with the teacher's whole-image mask."""
        batch, weight = self._share(self._pick(self.data.unlabeled, self.config.batch_unlabeled))
        perturb_seed = int(self.rng.integers(2**31))
        if not batch:
            return None
        inputs = self._embeddings(batch)
        boxes = torch.as_tensor(np.stack([whole_box(i.geometry.resized) for i in batch]))
        with torch.no_grad():
            teacher_masks = torch.sigmoid(self.teacher.segment(self.teacher.features(inputs), boxes)[0])
        perturbed = self._perturbed(self.model.embed(inputs), perturb_seed)
        student, _ = self.model.segment(self.model.adapter(perturbed), boxes)
        return weight * consistency_loss(student, teacher_masks)

    @torch.no_grad()
    def _update_teacher(self) -> None:
        decay = self.config.ema_decay
        student = dict(self.model.named_parameters())
        for name, parameter in self.teacher.named_parameters():
            if student[name].requires_grad:
                parameter.mul_(decay).add_(student[name].detach(), alpha=1 - decay)

    # -- evaluation, checkpoints, resume ----------------------------------------------------------------------
    def validate(self) -> dict:
        """Val summary of the better of the student and its EMA teacher (an average over about 100 steps, steadier
        late in a long run: on BUSI at 10% masks, step 500, val lesion Dice 0.711 against the student's 0.684; but
        behind the student early in a short one). `self.kept` is the one a checkpoint now would store."""
        self.kept = self.model
        if not self.data.val:
            return {}
        summary, _ = evaluate(self.model.eval(), self.data.val, with_hd95=False)
        if self.teacher is not None:
            teacher_summary, _ = evaluate(self.teacher.eval(), self.data.val, with_hd95=False)
            if self.val_score(teacher_summary) > self.val_score(summary):
                self.kept, summary = self.teacher, {**teacher_summary, "ema": True}
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
                 "torch_rng": torch.random.get_rng_state(), "train_config": asdict(self.config),
                 "image_view": self.image_view_report, "data": data_identity(self.data)}
        if self.teacher is not None:
            extra["teacher"] = self.teacher.trainable_state()
        save_checkpoint(self.model, self.out / "last.pt", extra)

    def load_resume_state(self, path: Path, same_data: bool = True) -> None:
        """Continue from `path` (last.pt). `same_data`: refuse one started on other images, tags or settings (the
        step budget apart: a run may be given more steps); the app's trainer resumes an interrupted round on the
        labels there are now."""
        payload = torch.load(path, map_location="cpu", weights_only=False)
        earlier, config = AdaSamConfig.from_dict(payload["config"]), self.model.config
        _same_encoder(earlier, config, f"{path}")
        again = "resume it with the settings it was started with, or give a new --out"
        if (earlier.method, earlier.backbone) != (config.method, config.backbone):
            raise CheckpointError(f"{path}: a run of {earlier.method} on {earlier.backbone}, this one asks for "
                                  f"{config.method} on {config.backbone}: {again}")
        self.model.load_state_dict(payload["state"], strict=False)
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except ValueError as exc:  # other trainable parts (--freeze-adapter, an image view ...)
            raise CheckpointError(f"{path}: trains other parts than this run would ({exc}): {again}") from None
        if same_data:  # other masks, tags, split or seed: it would go on as the old run, its summary saying the new
            def saved(value):  # as last.pt holds it (tuples as lists); an older last.pt has neither key: no check
                return json.loads(json.dumps(value))

            changed = []
            if "data" in payload and payload["data"] != saved(data_identity(self.data)):
                changed.append("other masked, tagged, unlabeled or val images")
            settings = _settings(asdict(self.config))
            if "train_config" in payload and _settings(payload["train_config"]) != saved(settings):
                changed.append("other training settings")
            if changed:
                raise CheckpointError(f"{path}: started with {' and '.join(changed)}: {again}")
        if self.teacher is not None and "teacher" in payload:
            self.teacher.load_state_dict(payload["teacher"], strict=False)
        self.step, self.best, self.history = payload["step"], payload["best"], payload["history"]
        self.image_view_report = payload.get("image_view")
        self.rng.bit_generator.state = payload["rng"]
        torch.random.set_rng_state(payload["torch_rng"])

    @property
    def stalled(self) -> bool:
        """`patience` evaluations in a row without a val score as good as the best: the budget rule of every method."""
        since_best = [r for r in self.history if r["step"] > self.best["step"]]
        return bool(self.config.patience) and len(since_best) >= self.config.patience

    def train_image_view(self, after_step: Callable[[], None] = lambda: None) -> None:
        """First, when the model has an image view: train it alone on the masked images (with augmentation) until its
        own val Dice stops improving, then keep it fixed while the rest trains (the maps it adds are then what val
        picks checkpoints and thresholds by). Done once per run: a resumed run finds it done in last.pt; one stopped
        by what `after_step` raises (called after every step of the view) starts again."""
        view = self.model.image_view
        if view is None or self.image_view_report is not None:
            return
        missing = [i.id for i in self.data.masked + self.data.val if i.image is None]
        if missing:
            raise ValueError(f"the image view needs the images: {len(missing)} items lack one (load_items with_images)")
        report = None
        if self.ranks.main:
            started = time.time()
            val = [i for i in self.data.val if i.mask is not None]
            val_images = torch.stack([i.image for i in val]) if val else None

            def val_score() -> float:
                return lesion_dice(view, val_images, [i.mask for i in val]) if val else math.nan

            view.requires_grad_(True)
            result = fit(view, torch.stack([i.image for i in self.data.masked]),
                         torch.stack([mask_target(i.mask) for i in self.data.masked]), val_score,
                         self.config.image_view, self.config.seed, log=lambda r: self.log(json.dumps(r)),
                         after_step=after_step, dtype=self.dtype)
            report = {"best_step": result["best_step"], "val_dice_lesion": result["score"],
                      "stopped_at": result["stopped_at"], "seconds": round(time.time() - started, 1)}
            self.log(json.dumps({"image_view": report}))
        state = self.ranks.from_main(view.state_dict() if self.ranks.main else None)  # one view on every rank
        for model in filter(None, (self.model, self.teacher)):
            model.image_view.load_state_dict(state)
            model.image_view.requires_grad_(False)
        self.image_view_report = self.ranks.from_main(report)

    def run(self, progress: Callable[[int, int], None] | None = None,
            stop_check: Callable[[], None] = lambda: None) -> dict:
        """Train (the image view first), then calibrate and check on val; returns `self.best`. `progress` is called
        after every training step, `stop_check` after every step of the image view (rank 0 trains it alone, so it
        must not be a collective as `progress` may be); what either raises stops the run. Validation passes decode
        through torch.compile (model.decoder.compiled_decoding): they are a third of an app round."""
        with compiled_decoding():
            return self._run(progress, stop_check)

    def _run(self, progress: Callable[[int, int], None] | None, stop_check: Callable[[], None]) -> dict:
        cfg = self.config
        self.train_image_view(after_step=stop_check)
        started = time.time()
        losses_since: list[dict] = []
        while self.step < cfg.steps and not self.stalled:
            losses_since.append(self.train_step())
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                if self.ranks.main:
                    self._evaluate_and_save(losses_since, started)
                losses_since = []
                self.best, self.history = self.ranks.from_main((self.best, self.history))  # one stopping rule
            if progress:
                try:
                    progress(self.step, cfg.steps)
                except Exception:  # a stop after a step (the background trainer's): resume from this step
                    self._save_on_stop()
                    raise
        if self.ranks.main:
            self.keep_presence_head()
            self.calibrate_best()
            self.self_train_image_view()
            self.check_image_view()
        self.ranks.barrier()  # model.pt is final when any rank returns
        if self.image_view_report is not None:
            self.best["image_view"] = self.image_view_report
        return self.best

    def _save_on_stop(self) -> None:
        """last.pt at the step a stop came after (rank 0); a failure to write it is logged, never raised over the
        stop itself."""
        if not self.ranks.main:
            return
        try:
            self.save_resume_state()
        except Exception as exc:  # noqa: BLE001 - the stop is what the caller must see
            self.log(json.dumps({"resume_state_not_saved": f"{type(exc).__name__}: {exc}", "step": self.step}))

    def _evaluate_and_save(self, losses_since: list[dict], started: float) -> None:
        """Validate, log, keep the best weights in model.pt and write last.pt (rank 0's job)."""
        summary = self.validate()
        score = self.val_score(summary)
        mean_losses = {k: float(np.mean([d[k] for d in losses_since if k in d]))
                       for k in {k for d in losses_since for k in d}}
        record = {"step": self.step, "score": score, "losses": mean_losses,
                  "val": {k: v for k, v in summary.items() if isinstance(v, (int, float))},
                  "elapsed_s": time.time() - started}
        self.history.append(record)
        self.log(json.dumps(record, default=float))
        if score >= self.best["score"]:
            self.best = {"score": score, "step": self.step, "val": record["val"]}
            save_checkpoint(self.kept, self.out / "model.pt", {"val": summary, "step": self.step})
        self.save_resume_state()

    def keep_presence_head(self) -> None:
        """After training, before calibration: model.pt decides presence with the last weights' adapter and
        classifier (the EMA teacher's where training keeps one), while its map and decoder stay the val-picked
        checkpoint's. Val's lesion Dice often picks that checkpoint before the classifier has learned to tell images
        apart: the last weights' val presence AUC was higher in 6 of 7 BUSI runs probed and on data two thirds
        target-free (benchmarks/README.md, "Twenty-seventh session"). Recorded in model.pt with the step it was taken
        at; done again only when a resumed run trained further. Not for an encoder with LoRA: the head would read
        the picked checkpoint's encoder, not the one it learned on."""
        config = self.model.config
        path = self.out / "model.pt"
        if config.method != "adasam" or not config.has_negatives or config.encoder_lora or not path.exists():
            return
        last = self.teacher if self.teacher is not None else self.model
        states = [copy.deepcopy(part.state_dict()) for part in (last.adapter, last.classifier)]
        payload = torch.load(path, map_location="cpu", weights_only=False)
        self._match_saved(payload)
        done = payload.get("presence_head")
        if done is not None and done.get("step") == self.step:  # a resumed finished run: model.pt holds it
            self.best["presence_head"] = done
            return
        model = self.model
        head = model.add_presence_head()
        model.eval().load_state_dict(payload["state"], strict=False)
        for part, state in zip((head.adapter, head.classifier), states):
            part.load_state_dict(state)
        self._record("presence_head", payload, {"weights": "EMA teacher" if last is self.teacher else "student",
                                                "step": self.step})

    def _match_saved(self, payload: dict) -> None:
        """Give the model the parts model.pt has, before its weights are loaded: a run resumed after it finished is
        rebuilt from its training settings, so it must not bring back an image view the check dropped, and it
        needs the presence head model.pt holds."""
        saved, model = AdaSamConfig.from_dict(payload["config"]), self.model
        if not saved.image_view and model.image_view is not None:
            model.image_view = None
            model.config = replace(model.config, image_view=False)
        if saved.presence_head:
            model.add_presence_head()

    def calibrate_best(self) -> None:
        """Load the val-picked weights (model.pt) into the model, choose its CAM and presence thresholds on val and
        store them in model.pt; the choice is recorded in `self.best["calibration"]`. Idempotent, so resuming a
        finished run redoes it."""
        path = self.out / "model.pt"
        if not (self.config.calibrate and self.data.val and path.exists()):
            return
        payload = torch.load(path, map_location="cpu", weights_only=False)
        self._match_saved(payload)
        self.model.load_state_dict(payload["state"], strict=False)
        # the checkpoint's val summary was taken at the current threshold: no need to evaluate that one again
        measured = {self.model.config.cam_threshold: payload.get("val", {}).get("dice_lesion_ungated")}
        report = calibrate(self.model.eval(), self.data.val, measured)
        report.update(calibrate_presence(self.model, self.data.val))
        if report:
            extra = {k: v for k, v in payload.items() if k not in ("format", "config", "state")}
            save_checkpoint(self.model, path, extra)
            self.best["calibration"] = report
            if "cam_threshold" in report:
                chosen = report["cam_threshold"]
                self._calibrated_val_dice = chosen["val_dice_lesion"][chosen["chosen"]]
            self.log(json.dumps({"calibration": report}))

    def self_train_image_view(self) -> None:
        """Last, when the model has an image view and there are unlabeled images: the view trains on, from its
        weights, the masked images plus the model's own proposals for the unlabeled ones (`proposal_targets`), so
        the semi-supervised objective reaches the view, which otherwise learns from the few masks alone. The new view
        replaces the old in model.pt (its CAM threshold chosen again) only if val lesion Dice is not lower. Done once:
        its report is stored in model.pt."""
        val = self._val_lesions()
        if not (self.model.image_view is not None and self.config.view_self_training and self.data.unlabeled
                and val and (self.out / "model.pt").exists()):
            return
        payload = self._reload_best("view_self_training")
        if payload is None:
            return
        started = time.time()
        model, view = self.model, self.model.image_view
        before = self._val_dice_as_saved(val)
        old_view, old_config = copy.deepcopy(view.state_dict()), replace(model.config)
        unlabeled = self.data.unlabeled  # each with its image: prompt_maps refuses a batch without them
        targets = proposal_targets(model, unlabeled)
        val_images = torch.stack([i.image for i in val])
        view.requires_grad_(True)
        result = fit(view, torch.stack([i.image for i in self.data.masked + unlabeled]),
                     torch.stack([mask_target(m) for m in [i.mask for i in self.data.masked] + targets]),
                     lambda: lesion_dice(view, val_images, [i.mask for i in val]),
                     replace(self.config.image_view, min_steps=0), self.config.seed,
                     log=lambda r: self.log(json.dumps({"view_self_training": r})), dtype=self.dtype)
        view.requires_grad_(False)
        calibration = calibrate(model, self.data.val) if self.config.calibrate else {}
        after = (max(calibration["cam_threshold"]["val_dice_lesion"].values()) if calibration
                 else evaluate(model, val, with_hd95=False)[0]["dice_lesion_ungated"])
        kept = after >= before  # presence is the map head's: its threshold stands
        if kept:
            self._calibrated_val_dice = after if calibration else None
        else:
            view.load_state_dict(old_view)
            model.config = old_config
        report = {"kept": kept, "val_dice_lesion_before": before, "val_dice_lesion_after": after,
                  "view_val_dice_lesion": result["score"], "best_step": result["best_step"],
                  "stopped_at": result["stopped_at"], "proposals": len(targets),
                  "seconds": round(time.time() - started, 1)}
        self._record("view_self_training", payload, report)

    def check_image_view(self) -> None:
        """Last of all: keep the image view only if it helps. Val lesion Dice of the model's prompts with the view's
        map averaged in, against the CAM alone (its threshold chosen again); where the CAM alone does better (a view
        that learned little, e.g. from a few small targets), model.pt drops the view. Done once, recorded in
        model.pt."""
        val = self._val_lesions()
        if not (self.model.image_view is not None and self.config.calibrate and val
                and (self.out / "model.pt").exists()):
            return
        payload = self._reload_best("image_view_check")
        if payload is None:
            return
        model = self.model
        with_view = self._val_dice_as_saved(val)
        view, model.image_view = model.image_view, None
        with_view_config = replace(model.config)
        calibration = calibrate(model, val)
        cam_alone = calibration["cam_threshold"]["val_dice_lesion"][model.config.cam_threshold]
        kept = with_view >= cam_alone
        if kept:
            model.image_view, model.config = view, with_view_config
        else:
            model.config = replace(model.config, image_view=False)
        self._record("image_view_check", payload,
                     {"kept": kept, "val_dice_lesion_with_view": with_view, "val_dice_lesion_cam_alone": cam_alone})

    def _val_dice_as_saved(self, val: list[Item]) -> float:
        """Val lesion Dice (before gating) of the model as model.pt now holds it: the figure its calibration measured
        when there was one (a phase after training need not decode val again for it), else evaluated now."""
        if self._calibrated_val_dice is None:
            return evaluate(self.model, val, with_hd95=False)[0]["dice_lesion_ungated"]
        return self._calibrated_val_dice

    def _val_lesions(self) -> list[Item]:
        return [i for i in self.data.val if i.mask is not None and i.mask.any()]

    def _reload_best(self, phase: str) -> dict | None:
        """For a phase after training: model.pt's payload, its weights and config loaded into the model (eval mode);
        None, the phase's report copied into `self.best`, when model.pt records the phase as done (a resumed run)."""
        payload = torch.load(self.out / "model.pt", map_location="cpu", weights_only=False)
        if phase in payload:
            self.best[phase] = payload[phase]
            return None
        self._match_saved(payload)
        self.model.eval().load_state_dict(payload["state"], strict=False)
        self.model.config = AdaSamConfig.from_dict(payload["config"])
        return payload

    def _record(self, phase: str, payload: dict, report: dict) -> None:
        """model.pt rewritten with the model as the phase left it and the phase's report (so it runs once)."""
        extra = {k: v for k, v in payload.items() if k not in ("format", "config", "state")}
        save_checkpoint(self.model, self.out / "model.pt", {**extra, phase: report})
        self.best[phase] = report
        self.log(json.dumps({phase: report}))


def written_val_dice(best: dict) -> float | None:
    """Val lesion Dice (before gating) of the model model.pt holds after every phase, from `Trainer.run`'s reports:
    the checkpoint's score is the map head's; calibration, the view's self-training and the view check come after
    it and may move it (by up to 0.025 on BUSI at 10% masks). None without a val lesion image."""
    if not best.get("val", {}).get("n_lesion"):
        return None
    check, self_training = best.get("image_view_check"), best.get("view_self_training")
    if check:
        return check["val_dice_lesion_with_view" if check["kept"] else "val_dice_lesion_cam_alone"]
    if self_training:
        return self_training["val_dice_lesion_after" if self_training["kept"] else "val_dice_lesion_before"]
    threshold = best.get("calibration", {}).get("cam_threshold")
    return max(threshold["val_dice_lesion"].values()) if threshold else best["score"]


def proposal_targets(model: AdaSam, items: list[Item], batch_size: int = 16) -> list[np.ndarray]:
    """What the model proposes for unlabeled images, as training targets: empty where an image is tagged
    target-free, the decoder's mask where tagged present, the presence-gated proposal where untagged."""
    predictor, targets = Predictor(model.eval()), []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        for item, p in zip(chunk, predictor.predict_batch(*batch_inputs(chunk))):
            targets.append(np.zeros_like(p.raw_mask) if item.tag is False
                           else p.raw_mask if item.tag else p.mask)
    return targets


class _StepLosses(torch.nn.Module):
    """One step's loss terms as a module's forward, the form DistributedDataParallel wraps to average gradients."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        self.model = trainer.model
        # weak: the trainer holds this module, and a strong reference back would make a cycle that keeps a round's
        # embeddings (gigabytes) alive until Python's cycle collector happens to run (a trainer process grew by
        # ~2.5 GB a round on BUSI, and a benchmark was killed at 17 GB)
        self._losses = weakref.WeakMethod(trainer._decoder_only_losses if trainer.supervised
                                          else trainer._adasam_losses)

    def forward(self) -> dict[str, torch.Tensor]:
        return self._losses()()


def build_training_model(config: AdaSamConfig, seed: int, backbone=None, init: str | Path | None = None) -> AdaSam:
    """A fresh model (seeded), or one warm-started from an earlier model's trainable weights (`init`)."""
    torch.manual_seed(seed)
    if init is not None:
        check_init(init, config.encoder_lora)
        model, _ = load_checkpoint(init, backbone)
        model.config = config
        model.presence = None  # a run gives its model a presence head of its own when it ends
        if config.image_view != (model.image_view is not None):  # a view joins (fresh) or leaves the model
            model.image_view = build_unet().to(model.device) if config.image_view else None
        return model
    return build_adasam(config, backbone)


def check_init(init: str | Path, encoder_lora: int, backbone=None) -> None:
    """CheckpointError unless a run with this encoder setting (and `backbone`, if given) can start from `init`:
    `adasam train` asks before it embeds the data (hours on a large folder), not after."""
    path, payload, earlier = read_checkpoint(init)
    _same_encoder(earlier, replace(earlier, encoder_lora=encoder_lora), f"{init}")
    if backbone is not None:
        same_backbone(path, payload, backbone.identity)


def _same_encoder(earlier: AdaSamConfig, config: AdaSamConfig, source: str) -> None:
    """A run starts or resumes from weights of the same encoder setting (frozen, or LoRA of the same rank): LoRA
    weights cannot be carried into another rank or dropped without the model changing under them."""
    if earlier.encoder_lora != config.encoder_lora:
        def name(rank: int) -> str:
            return f"encoder LoRA rank {rank}" if rank else "the frozen encoder"
        raise CheckpointError(f"{source}: trained with {name(earlier.encoder_lora)}, this run asks for "
                              f"{name(config.encoder_lora)} (--encoder-lora); use the same setting or start afresh")


def model_config(method: str, backbone: str, data: TrainingData, **settings) -> AdaSamConfig:
    """The model `method` trains on `data`: the one place the per-method rules live (`adasam train` and the
    background trainer both build through it). Mean teacher has no classifier: whole-image prompts, presence assumed.
    ADA-SAM without any target-free image assumes presence too, and its map learns from the masks alone."""
    config = AdaSamConfig(backbone=backbone, method=method, **settings)
    if method == "meanteacher":
        return replace(config, prompt="whole", has_negatives=False)
    if method == "adasam" and not detect_negatives(data):
        return replace(config, has_negatives=False)
    return config


def detect_negatives(data: TrainingData) -> bool:
    """Whether any tagged image is target-absent: without one the classifier has nothing to contrast."""
    return any(i.tag is False for i in data.tagged)
