"""ADA-SAM: a SAM backbone, a shared trainable adapter, a presence classifier whose CAM prompts the mask decoder."""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model import image_view
from model.atomic import save_torch
from model.backbones import Backbone, backbone_view, build_backbone
from model.cam import activation_map, cam_peaks, cam_to_box, central_box
from model.decoder import decode
from model.heads import LocationClassifier, PresenceHead, SharedAdapter
from model.lora import apply_lora
from model.preprocess import Geometry, mask_box

CHECKPOINT_FORMAT = 2  # 2: the classifier reads position channels and a pooling pyramid (format 1 models: retrain)


@dataclass
class AdaSamConfig:
    """Everything needed to rebuild a model; stored in every checkpoint."""

    backbone: str = "litemedsam"  # NAME or NAME:CHECKPOINT_PATH (see model.backbones)
    method: str = "adasam"  # "adasam" (CAM prompts, classifier); "supervised" / "meanteacher": whole-image box, no
    # classifier (meanteacher is built with prompt="whole", has_negatives=False, so inference needs no special case)
    adapter_hidden: int = 64
    classifier_dropout: float = 0.3
    prompt: str = "cam"  # "cam": the CAM box prompts the decoder; "whole": the whole image does (ablation)
    cam_threshold: float = 0.4
    cam_component: str = "peak"  # "peak": the CAM region holding the maximum; "all": every pixel above threshold
    cam_points: int = 0  # extra positive point prompts at the CAM's strongest peaks (0 = box only; see benchmarks)
    cascade: int = 0  # re-prompt this many times with the box of the previous mask (with the map's box it cost
    # 0.035 val lesion Dice on BUSI at 10% masks: 0.728 -> 0.692)
    presence_threshold: float = 0.5  # below it the automatic mask is empty ("no finding")
    encoder_lora: int = 0  # LoRA rank on the encoder's attention (0 = frozen encoder, cached embeddings)
    image_view: bool = False  # the classifier also reads the image (model.image_view): its map joins the CAM's
    has_negatives: bool = True  # False: the data had no target-absent image; presence is then assumed
    presence_head: bool = False  # P(target present) from a head of its own (model.heads.PresenceHead), not the map's

    @property
    def cam_prompted(self) -> bool:
        """Whether the CAM box prompts the decoder (else the whole image does: supervised, mean teacher, ablation)."""
        return self.method == "adasam" and self.prompt == "cam"

    @classmethod
    def from_dict(cls, values: dict) -> "AdaSamConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class AdaSam(nn.Module):
    """Works on image embeddings: cached ones, or, when the encoder carries LoRA and so trains, on preprocessed images
    that `embed` encodes at every use (model.cache.model_inputs gives each model the inputs it reads)."""

    def __init__(self, config: AdaSamConfig, backbone: Backbone) -> None:
        super().__init__()
        if config.encoder_lora:  # LoRA rewrites the encoder: never the one a cache's backbone shares
            backbone = backbone_view(backbone, own_encoder=True)
        self.config = config
        self.backbone = backbone
        dim = backbone.embedding_shape[0]
        self.adapter = SharedAdapter(dim, config.adapter_hidden)
        self.classifier = LocationClassifier(dim, dropout=config.classifier_dropout)
        self.image_view = image_view.build_unet() if config.image_view else None
        self.presence = PresenceHead(dim, config.adapter_hidden, config.classifier_dropout) \
            if config.presence_head else None
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
        for parameter in backbone.mask_decoder.parameters():
            parameter.requires_grad_(True)
        if config.encoder_lora:
            apply_lora(backbone.image_encoder, config.encoder_lora)

    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    @property
    def cam_scale(self) -> float:
        return self.image_size / self.backbone.embedding_shape[1]

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def grid(self) -> int:
        """Side of the embedding grid the adapter, the classifier and its map work on."""
        return self.backbone.embedding_shape[-1]

    @property
    def encodes_live(self) -> bool:
        """Whether the encoder trains (LoRA), so the model reads preprocessed images, not cached embeddings."""
        return bool(self.config.encoder_lora)

    def train(self, mode: bool = True) -> "AdaSam":
        """The encoder stays in eval mode, its batch norms on their pretrained statistics: while LoRA trains it, and
        when it is frozen and shared with the backbone that fills the embedding cache (backbone_view), which in train
        mode would compute, and cache, other embeddings after every round."""
        super().train(mode)
        self.backbone.image_encoder.eval()
        return self

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's inputs (on any device) -> embeddings on its device: cached embeddings pass through, images in
        [0, 1] (B x 3 x S x S, model.preprocess) are encoded when the encoder trains."""
        inputs = inputs.to(self.device)
        if not self.encodes_live:
            return inputs
        with live_encoder_precision(self.device):
            return self.backbone.encode(inputs).float()

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's inputs -> adapted features on its device."""
        return self.adapter(self.embed(inputs))

    def segment(self, features: torch.Tensor, boxes: torch.Tensor | None = None,
                points: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features + one prompt per image -> (B x 1 x H x W mask logits at 4x the embedding size, IoU)."""
        return decode(self.backbone.mask_decoder, self.backbone.prompt_encoder, features, boxes=boxes, points=points)

    def add_presence_head(self) -> PresenceHead:
        """Give the model a presence head (untrained until its weights are loaded), and the config that says so."""
        if self.presence is None:
            self.presence = PresenceHead(self.backbone.embedding_shape[0], self.config.adapter_hidden,
                                         self.config.classifier_dropout).to(self.device)
        self.config = replace(self.config, presence_head=True)
        return self.presence

    def presence_reader(self, embeddings: torch.Tensor, features: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
        """(the classifier that decides P(target present), the features it reads): the presence head's over its own
        adapter when the model has one, else the map's classifier over `features` (the model's adapted
        `embeddings`)."""
        if self.presence is None:
            return self.classifier, features
        return self.presence.classifier, self.presence.adapter(embeddings)

    def cam(self, features: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B x h x w map in [0, 1] that prompts the decoder, B x 2 presence logits)."""
        return activation_map(self.classifier, features, valid)

    def prompt_maps(self, cams: torch.Tensor, images: torch.Tensor | None, geometries: list[Geometry]) -> torch.Tensor:
        """The maps whose boxes prompt the decoder: the CAM, averaged with the image view's map when the model has
        one (`images`: B x 1 x S x S, model.image_view.image_input; required then)."""
        if self.image_view is None:
            return cams
        if images is None:
            raise ValueError("this model's classifier also reads the image (image view): pass the images")
        seen = image_view.on_grid(image_view.probabilities(self.image_view, images), geometries, self.grid)
        return (cams + seen.to(cams.device)) / 2

    def auto_boxes(self, cams: torch.Tensor, valid_hw: list[tuple[int, int]]) -> tuple[torch.Tensor, list[bool]]:
        """The automatic prompt for each image: its CAM box (adasam) or the whole image (supervised)."""
        boxes, fallbacks = [], []
        for cam, hw in zip(cams, valid_hw):
            if not self.config.cam_prompted:
                box, fallback = whole_box(hw), False
            else:
                box, fallback = cam_to_box(cam.detach().cpu().numpy(), self.config.cam_threshold, self.cam_scale, hw,
                                           self.config.cam_component)
            boxes.append(box)
            fallbacks.append(fallback)
        return torch.as_tensor(np.stack(boxes)), fallbacks

    def auto_points(self, cams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`cam_points` positive clicks per image at the CAM's peaks (the automatic prompt's optional extra)."""
        count = self.config.cam_points
        if not count or not self.config.cam_prompted:
            return None
        coords = np.zeros((len(cams), count, 2), np.float32)
        labels = np.full((len(cams), count), -1.0, np.float32)  # -1: padding, for images with fewer peaks
        for i, cam in enumerate(cams):
            peaks = cam_peaks(cam.detach().cpu().numpy(), count, self.cam_scale)
            coords[i, :len(peaks)], labels[i, :len(peaks)] = peaks, 1.0
        return torch.from_numpy(coords), torch.from_numpy(labels)

    @torch.no_grad()
    def cascade(self, features: torch.Tensor, boxes: torch.Tensor, logits: torch.Tensor,
                steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-prompt with the box of the previous mask (a loose CAM box becomes a tight one)."""
        for _ in range(steps):
            scale = self.image_size / logits.shape[-1]
            new_boxes = boxes.clone()
            for i, mask in enumerate((logits[:, 0] > 0).cpu()):
                box = mask_box(mask)
                if box is not None:
                    new_boxes[i] = torch.as_tensor(box * scale, device=new_boxes.device)
            boxes = new_boxes
            logits, _ = self.segment(features, boxes)
        return logits, boxes

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The weights training may change (adapter, classifier, decoder, LoRA, image view) and the presence head:
        the frozen encoder is not stored, it comes from the backbone checkpoint. The decoder is stored even when a
        run kept it frozen, so a model warm-started from one with a trained decoder keeps it."""
        kept = ("backbone.mask_decoder.", "image_view.", "presence.")  # stored also when frozen
        names = {n for n, p in self.named_parameters() if p.requires_grad or n.startswith(kept)}
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items() if k in names}


def live_encoder_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for an encoder that trains (LoRA) on a GPU with bf16 units: the encoder is most of a LoRA step
    (0.365 s against 0.134 s frozen on an H200 in float32/TF32), and every image of every step goes through it.
    Float32 elsewhere: a CPU gains nothing worth the rounding (OpenVINO bf16 moved embeddings by ~6%)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def whole_box(valid_hw: tuple[int, int]) -> np.ndarray:
    """The image itself as a box, in model input pixels (padding excluded)."""
    return np.array([0, 0, valid_hw[1], valid_hw[0]], dtype=np.float32)


def build_adasam(config: AdaSamConfig, backbone: Backbone | None = None) -> AdaSam:
    """A fresh ADA-SAM around the named backbone (or one already built, to share it)."""
    backbone = backbone if backbone is not None else build_backbone(config.backbone)
    return AdaSam(config, backbone).to(backbone.device)


def save_checkpoint(model: AdaSam, path: str | Path, extra: dict | None = None) -> None:
    """Trainable weights + config (+ `extra`, e.g. metrics or optimiser state) written atomically."""
    payload = {"format": CHECKPOINT_FORMAT, "config": asdict(model.config), "state": model.trainable_state(),
               "backbone_identity": model.backbone.identity, **(extra or {})}
    save_torch(payload, path)


class CheckpointError(ValueError):
    """A model checkpoint that cannot be used (one-line message)."""


def read_checkpoint(path: str | Path, weights_only: bool = False) -> tuple[Path, dict, AdaSamConfig]:
    """(file, payload, config) of a checkpoint file or a run folder holding `model.pt`, whatever its format.
    `weights_only`: for a file from elsewhere (a remote trainer's upload): tensors and plain values only, no code."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model checkpoint (train one with `adasam train`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=weights_only)
        return path, payload, AdaSamConfig.from_dict(payload["config"])
    except Exception as exc:
        raise CheckpointError(f"{path}: not an ADA-SAM checkpoint ({type(exc).__name__})") from None


def load_checkpoint(path: str | Path, backbone: Backbone | None = None,
                    weights_only: bool = False) -> tuple[AdaSam, dict]:
    """(model, the whole payload) from a checkpoint file or a run folder holding `model.pt`; `weights_only` for a
    file from elsewhere, as `read_checkpoint`."""
    path, payload, config = read_checkpoint(path, weights_only=weights_only)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: made by another version of ADA-SAM Studio (checkpoint format "
                              f"{payload.get('format')}, this one reads {CHECKPOINT_FORMAT}); train it again")
    model = build_adasam(config, backbone)
    same_backbone(path, payload, model.backbone.identity)
    result = model.load_state_dict(payload["state"], strict=False)  # copies onto the model's device
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: weights do not fit this model, e.g. {result.unexpected_keys[0]!r}")
    return model.eval(), payload


def same_backbone(path: str | Path, payload: dict, identity: str) -> None:
    """CheckpointError unless the checkpoint was trained on the backbone `identity` names (or does not say): same
    shapes with other weights would load without a word, and predict wrong."""
    trained_on = payload.get("backbone_identity")
    if trained_on and trained_on != identity:
        raise CheckpointError(f"{path}: trained on backbone {trained_on}, not on this one ({identity}); give the "
                              "backbone it was trained on, or train it again")


def checkpoint_problem(path: str | Path) -> str | None:
    """None if this version can load the checkpoint, else the one-line reason (e.g. a model trained by an earlier
    version of the tool, which a workspace may still list as serving). Cached per file and modification time."""
    path = Path(path)
    try:
        key = (str(path.resolve()), path.stat().st_mtime_ns)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if key not in _PROBLEMS:
        try:
            _, payload, config = read_checkpoint(path)
            found = payload.get("format")
            problem = (f"checkpoint format {found}, this version reads {CHECKPOINT_FORMAT}"
                       if found != CHECKPOINT_FORMAT else serving_problem(config))
            _PROBLEMS[key] = f"{path.name}: {problem}" if problem else None
        except CheckpointError as exc:
            _PROBLEMS[key] = str(exc)
    return _PROBLEMS[key]


def serving_problem(config: AdaSamConfig) -> str | None:
    """Why the web app cannot serve this model, if it cannot: an encoder that trained (LoRA; the app works on cached
    embeddings of the frozen encoder, and a model that encodes each image itself would also change the shared
    encoder's weights)."""
    if config.encoder_lora:
        return "trained with encoder LoRA (adasam train --encoder-lora): the app serves frozen-encoder models only"
    return None


_PROBLEMS: dict[tuple[str, int], str | None] = {}


__all__ = ["AdaSam", "AdaSamConfig", "build_adasam", "save_checkpoint", "load_checkpoint", "central_box"]
