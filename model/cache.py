"""On-disk cache of image embeddings: the encoder runs once per image, everything else reads the cache.

An entry is keyed by the image's content hash, the backbone's weights identity and PREPROCESS_VERSION, so new
weights or a new preprocessing recipe never read a stale embedding. Entries are written to a temporary file and
renamed into place (atomic on POSIX), stored as float16, and any entry that fails to load or has the wrong shape is
recomputed rather than trusted.
"""
from __future__ import annotations

import hashlib
import os
import warnings
import weakref
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

from model.atomic import save_torch
from model.backbones import Backbone
from model.preprocess import PREPROCESS_VERSION, Geometry, preprocess_image, read_image

DEFAULT_CACHE_DIR = Path(os.environ.get("ADASAM_CACHE", Path.home() / ".cache" / "adasam" / "embeddings"))
COMPILE_FROM = 100  # misses in one call from which compiling the encoder pays off on the CPU: torch.compile costs
# ~80 s once per process on 2 cores and makes LiteMedSAM's encoder ~1.5x faster (benchmarks/speed.py); None: never


def content_hash(image: np.ndarray) -> str:
    """SHA-256 of the pixel values, shape and dtype (not the file bytes: a re-saved PNG hits the same entry)."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{image.shape}{image.dtype}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """Embeddings of one backbone, stored under `root/<backbone identity>/<preprocess version>/`."""

    def __init__(self, root: str | Path, backbone: Backbone, batch_size: int = 1,
                 compile_from: int | None = COMPILE_FROM) -> None:
        self.backbone = backbone
        self.batch_size = batch_size
        self.compile_from = compile_from
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
        compiled = (self.compile_from is not None and len(misses) >= self.compile_from
                    and self.backbone.device.type == "cpu")  # a GPU encodes BUSI in 30 s: no need
        bar = tqdm(total=len(misses), desc=description, unit="img", disable=not progress or not misses)
        for start in range(0, len(misses), self.batch_size):
            chunk = misses[start:start + self.batch_size]
            prepared = [preprocess_image(array, self.backbone.image_size) for _, _, array in chunk]
            embeddings = encode_batch(self.backbone, torch.stack([tensor for tensor, _ in prepared]), compiled)
            for (index, key, _), (_, geometry), embedding in zip(chunk, prepared, embeddings):
                self.store(key, embedding, geometry)
                for same in waiting[key]:
                    results[same] = (embedding.to(torch.float16).float(), geometry)
                self.encoded += 1
            bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]


@torch.inference_mode()
def encode_batch(backbone: Backbone, images: torch.Tensor, compiled: bool = False) -> torch.Tensor:
    """Encode preprocessed images; channels-last memory layout is ~30% faster for TinyViT's convolutions on CPU,
    and `compiled` runs the encoder through torch.compile (worth it for many images; see COMPILE_FROM)."""
    backbone.image_encoder.to(memory_format=torch.channels_last)
    images = images.to(backbone.device).contiguous(memory_format=torch.channels_last)
    return backbone.encode(images, compiled_encoder(backbone) if compiled else None).contiguous().cpu()


def compiled_encoder(backbone: Backbone) -> torch.nn.Module:
    """The backbone's encoder through torch.compile, built once per backbone object; the plain encoder when the
    platform cannot compile (no C++ compiler, say): the embeddings are the same either way (float tolerance)."""
    cached = _COMPILED.get(backbone)
    if cached is None:
        cached = torch.compile(backbone.image_encoder)
        try:
            with torch.inference_mode():
                cached(torch.zeros(1, 3, backbone.image_size, backbone.image_size,
                                   device=backbone.device).contiguous(memory_format=torch.channels_last))
        except Exception as exc:  # inductor raises many types
            warnings.warn(f"torch.compile failed ({type(exc).__name__}); encoding without it")
            cached = backbone.image_encoder
        _COMPILED[backbone] = cached
    return cached


_COMPILED: "weakref.WeakKeyDictionary[Backbone, torch.nn.Module]" = weakref.WeakKeyDictionary()  # kept off the
# backbone itself, so copying or saving a model never meets a compiled module
