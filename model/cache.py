"""On-disk cache of image embeddings: the encoder runs once per image, everything else reads the cache.

An entry is keyed by the image's content hash, the backbone's weights identity and PREPROCESS_VERSION, so new
weights or a new preprocessing recipe never read a stale embedding. Entries are written to a temporary file and
renamed into place (atomic on POSIX), stored as float16, and any entry that fails to load or has the wrong shape is
recomputed rather than trusted.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from model.atomic import save_torch
from model.backbones import Backbone
from model.distributed import Ranks
from model.openvino_encoder import onnx_file, openvino_encoder
from model.preprocess import PREPROCESS_VERSION, Geometry, preprocess_image, read_image

DEFAULT_CACHE_DIR = Path(os.environ.get("ADASAM_CACHE", Path.home() / ".cache" / "adasam" / "embeddings"))
OPENVINO_FROM = 8  # misses in one call from which the CPU encodes through OpenVINO (model/openvino_encoder.py), about
# 1.8x PyTorch for LiteMedSAM; its one-time export (~6 s) costs about 8 PyTorch encodings. None: never


def content_hash(image: np.ndarray) -> str:
    """SHA-256 of the pixel values, shape and dtype (not the file bytes: a re-saved PNG hits the same entry)."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{image.shape}{image.dtype}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """Embeddings of one backbone, stored under `root/<backbone identity>/<preprocess version>/`."""

    def __init__(self, root: str | Path, backbone: Backbone, batch_size: int = 1,
                 openvino_from: int | None = OPENVINO_FROM) -> None:
        self.backbone = backbone
        self.batch_size = batch_size
        self.openvino_from = openvino_from
        self.root = Path(root)
        self.folder = Path(root) / backbone.identity / PREPROCESS_VERSION
        self.folder.mkdir(parents=True, exist_ok=True)
        self.encoded = 0  # how many embeddings this instance computed (the rest were cache hits)

    def path_for(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pt"

    def load(self, key: str) -> tuple[torch.Tensor, Geometry] | None:
        """The cached (embedding, geometry) for `key`, or None when absent, corrupt or stale."""
        path = self.path_for(key)
        if not path.exists():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            embedding = entry["embedding"]
            if entry["key"] != key or tuple(embedding.shape) != self.backbone.embedding_shape:
                return None
            return embedding, Geometry(*entry["geometry"])
        except Exception:  # a truncated or foreign file is simply recomputed
            return None

    def store(self, key: str, embedding: torch.Tensor, geometry: Geometry) -> None:
        entry = {"key": key, "embedding": embedding.to(torch.float16).contiguous(),
                 "geometry": (geometry.height, geometry.width, geometry.size)}
        save_torch(entry, self.path_for(key))

    def get(self, image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        """Embedding (float32, C x h x w) and geometry of one image array, encoding it on a miss."""
        return self.get_many([image], progress=False)[0]

    def get_many(self, images: Iterable[np.ndarray | str | Path], progress: bool = True,
                 description: str = "embedding") -> list[tuple[torch.Tensor, Geometry]]:
        """Embeddings of many images (arrays or file paths), encoding the misses in batches with a progress bar."""
        items = list(images)
        results: list[tuple[torch.Tensor, Geometry] | None] = [None] * len(items)
        misses: list[tuple[int, str, np.ndarray]] = []
        waiting: dict[str, list[int]] = {}  # key -> every index with those pixels (a duplicate is encoded once)
        for index, item in enumerate(items):
            array = read_image(item) if isinstance(item, (str, Path)) else item
            key = content_hash(array)
            if key in waiting:
                waiting[key].append(index)
                continue
            hit = self.load(key)
            if hit is None:
                misses.append((index, key, array))
                waiting[key] = [index]
            else:
                results[index] = (hit[0].float(), hit[1])
        encoder = self._encoder(len(misses))
        bar = tqdm(total=len(misses), desc=description, unit="img", disable=not progress or not misses)
        for start in range(0, len(misses), self.batch_size):
            chunk = misses[start:start + self.batch_size]
            prepared = [preprocess_image(array, self.backbone.image_size) for _, _, array in chunk]
            embeddings = encode_batch(self.backbone, torch.stack([tensor for tensor, _ in prepared]), encoder)
            for (index, key, _), (_, geometry), embedding in zip(chunk, prepared, embeddings):
                self.store(key, embedding, geometry)
                for same in waiting[key]:
                    results[same] = (embedding.to(torch.float16).float(), geometry)
                self.encoded += 1
            bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]

    def fill(self, images: list[np.ndarray], ranks: Ranks, description: str = "embedding") -> None:
        """Put every image's embedding in the cache, the misses split across ranks (torchrun): each rank encodes its
        share, then all wait, so that every rank can read every embedding next. Progress shows on rank 0."""
        self.get_many(ranks.share(images), progress=ranks.main, description=description)
        ranks.barrier()

    def expect(self, misses: int) -> None:
        """Say that about `misses` images will be encoded one `get` at a time, so the encoder is chosen (and OpenVINO's
        exported once) as for one call with that many."""
        self._encoder(misses)

    def _encoder(self, misses: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """OpenVINO on the CPU for many misses, or for any once this machine has exported the encoder; else None
        (PyTorch: GPUs encode BUSI in seconds anyway)."""
        if self.openvino_from is None or self.backbone.device.type != "cpu" or not misses:
            return None
        if misses >= self.openvino_from or onnx_file(self.backbone, self.root).is_file():
            return openvino_encoder(self.backbone, self.root)
        return None


class PreprocessedImages:
    """EmbeddingCache's reading interface for a model whose encoder trains (encoder LoRA): no embedding stays valid,
    so each image's model input is the preprocessed image itself, which `AdaSam.embed` encodes at every use."""

    encoded = 0  # nothing is ever encoded here

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone

    def get(self, image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        return preprocess_image(image, self.backbone.image_size)

    def get_many(self, images: Iterable[np.ndarray | str | Path], progress: bool = True,
                 description: str = "") -> list[tuple[torch.Tensor, Geometry]]:
        return [self.get(read_image(i) if isinstance(i, (str, Path)) else i) for i in images]

    def fill(self, images: list[np.ndarray], ranks: Ranks, description: str = "") -> None:
        """Nothing to fill: every rank preprocesses what it reads."""


def model_inputs(backbone: Backbone, encoder_lora: int, root: str | Path = DEFAULT_CACHE_DIR):
    """Where a model's inputs come from: the embedding cache for a frozen encoder, the images for one with LoRA."""
    return PreprocessedImages(backbone) if encoder_lora else EmbeddingCache(root, backbone)


@torch.inference_mode()
def encode_batch(backbone: Backbone, images: torch.Tensor,
                 encoder: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Encode preprocessed images with PyTorch, or with `encoder` (an OpenVINO one, see EmbeddingCache._encoder).
    Channels-last memory layout is ~30% faster for TinyViT's convolutions under PyTorch on the CPU."""
    if encoder is not None:
        return encoder(images).contiguous()
    backbone.image_encoder.to(memory_format=torch.channels_last)
    images = images.to(backbone.device).contiguous(memory_format=torch.channels_last)
    return backbone.encode(images).contiguous().cpu()
