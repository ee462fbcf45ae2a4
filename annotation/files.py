"""Content-addressed pixel files: written to a temporary name, synced and renamed, never changed afterwards.

Because a file's name is the hash of its pixels, writing the same image twice is a no-op, a database row can only
point at a complete file, and a file left behind by a crash is merely an orphan that `collect_garbage` removes.
"""
from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

TMP_PREFIX = ".tmp-"


def pixel_hash(pixels: np.ndarray) -> str:
    """Hash of the decoded pixels (type, shape, values): the same picture in two file formats is one image."""
    pixels = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(f"{pixels.dtype.str}|{pixels.shape}|".encode())
    digest.update(pixels.data)
    return digest.hexdigest()


def _png_friendly(pixels: np.ndarray) -> bool:
    """PNG (through Pillow) holds 8-bit grey or RGB and 16-bit grey exactly; anything else goes to .npy."""
    if pixels.dtype == np.uint8:
        return pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)
    return pixels.dtype == np.uint16 and pixels.ndim == 2


def encode(pixels: np.ndarray) -> tuple[bytes, str]:
    """Lossless bytes and extension for a pixel array (PNG where it fits, numpy's .npy otherwise)."""
    buffer = io.BytesIO()
    if _png_friendly(pixels):
        # compress_level=1: several times faster than the default and still lossless
        Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue(), ".png"
    np.save(buffer, np.ascontiguousarray(pixels), allow_pickle=False)
    return buffer.getvalue(), ".npy"


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either no file or the whole file, never a partial one."""
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}{path.suffix}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FileStore:
    """Pixel files under one folder, addressed as '<kind>/<hash[:2]>/<hash>.<ext>' relative to that folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    def put(self, pixels: np.ndarray, kind: str) -> tuple[str, str]:
        """Store pixels (once) and return (hash, relative path)."""
        sha = pixel_hash(pixels)
        relpath = f"{kind}/{sha[:2]}/{sha}{'.png' if _png_friendly(pixels) else '.npy'}"
        target = self.root / relpath
        if target.exists():
            os.utime(target)  # fresh mtime keeps collect_garbage off a file about to be referenced again
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_durably(target, encode(pixels)[0])
        return sha, relpath

    def put_mask(self, mask: np.ndarray) -> str:
        """Store a boolean mask as a 0/255 8-bit PNG (the datasets' own mask convention)."""
        return self.put(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8), "masks")[1]

    def read(self, relpath: str) -> np.ndarray:
        path = self.root / relpath
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with Image.open(path) as image:
            pixels = np.array(image)
        return pixels.astype(np.uint16) if pixels.dtype.kind in "iu" and pixels.dtype.itemsize == 2 else pixels

    def read_mask(self, relpath: str) -> np.ndarray:
        return self.read(relpath) > 0

    def collect_garbage(self, referenced: set[str], grace_seconds: float = 3600.0) -> int:
        """Delete files no row references (and stale temporaries), sparing recent ones a writer may be about to use."""
        removed = 0
        cutoff = time.time() - grace_seconds
        if not self.root.exists():
            return 0
        for path in self.root.rglob("*"):
            if not path.is_file():
                continue
            relpath = path.relative_to(self.root).as_posix()
            try:
                if relpath in referenced or path.stat().st_mtime > cutoff:
                    continue
                path.unlink()
            except FileNotFoundError:  # another process collected it first
                continue
            removed += 1
        return removed
