"""Model-test helpers: shared backbones, encoded blob items, one torch thread. The blob data sets themselves live in
`model.testing` (the benchmarks' --quick runs use them too); they are re-exported here."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from model.testing import blob_image, write_blob_dataset, write_blob_folder  # noqa: F401 (re-exported)


# -- model-test helpers ----------------------------------------------------------------------------------------------
# Expensive objects (backbones, real encoder passes) are memoised per process so several test modules share them.
# Shared backbones must never be trained: tests that change weights build their own (micro_backbone, build_backbone).

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run a model test module on one torch thread, then restore the setting.

    The test tensors are small, and on a shared 2-core machine OpenMP threads spin-waiting for a busy core made
    the tests 3-5x slower than one thread (measured); one thread also leaves the other core to other work.
    Import this name into a test module to use it.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@functools.lru_cache(maxsize=None)
def shared_backbone(name: str):
    """A backbone built once per test process (read-only use: inference, encoding)."""
    from model.backbones import build_backbone

    return build_backbone(name)


def micro_backbone(seed: int = 0, dim: int = 32):
    """The `micro_random` backbone: LiteMedSAM-shaped, small enough to train for dozens of steps in a second or two."""
    from model.backbones import build_micro_random

    return build_micro_random(seed, dim).eval()


def blob_items(backbone, n: int, negatives: int = 0, seed: int = 0, size: tuple[int, int] = (48, 56),
               with_masks: bool = True, prefix: str = "b", radius: tuple[float, float] = (0.1, 0.2),
               with_images: bool = False) -> list:
    """model.evaluate.Item list of blob images encoded by `backbone` (first `negatives` without a blob); with
    `with_images`, each also carries the image view's input."""
    import torch

    from model.cache import encode_batch
    from model.evaluate import Item
    from model.image_view import image_input
    from model.preprocess import preprocess_image

    rng = np.random.default_rng(seed)
    pairs = [blob_image(rng, size, present=k >= negatives, radius=radius) for k in range(n)]
    prepared = [preprocess_image(image, backbone.image_size) for image, _ in pairs]
    embeddings = encode_batch(backbone, torch.stack([t for t, _ in prepared])).float()
    return [Item(f"{prefix}{k}", embeddings[k].clone(), geometry, mask if with_masks else None, bool(mask.any()),
                 image_input(image) if with_images else None)
            for k, ((image, mask), (_, geometry)) in enumerate(zip(pairs, prepared))]


@functools.lru_cache(maxsize=None)
def tiny_blob_items(n: int = 3) -> tuple:
    """`n` blob images (the first without a blob) encoded once by the shared tiny_random backbone."""
    return tuple(blob_items(shared_backbone("tiny_random"), n, negatives=1, seed=5, size=(96, 112), prefix="t"))


@functools.lru_cache(maxsize=None)
def lite_blob() -> dict:
    """One synthetic blob image encoded once by the real LiteMedSAM weights (~1.5 s on 2 cores)."""
    from model.cache import encode_batch
    from model.preprocess import preprocess_image

    backbone = shared_backbone("litemedsam")
    image, mask = blob_image(np.random.default_rng(11), (150, 180))
    tensor, geometry = preprocess_image(image, backbone.image_size)
    embedding = encode_batch(backbone, tensor[None])[0].float().clone()  # a normal tensor, not an inference one
    return {"backbone": backbone, "image": image, "mask": mask, "embedding": embedding, "geometry": geometry}
