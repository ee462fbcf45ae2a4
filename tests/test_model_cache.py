"""The embedding cache: round trip, hits, corrupt and stale entries, keys, atomic writes."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import model.cache as cache_module
import model.openvino_encoder as openvino_module
from model.cache import EmbeddingCache, content_hash, encode_batch
from model.openvino_encoder import OpenVinoEncoder, export_encoder, onnx_file
from model.preprocess import PREPROCESS_VERSION, preprocess_image
from model_fixtures import blob_image, lite_blob, micro_backbone, shared_backbone, one_torch_thread  # noqa: F401 (autouse)


@pytest.fixture(scope="module")
def backbone():
    return shared_backbone("tiny_random")


@pytest.fixture(scope="module")
def image():
    return blob_image(np.random.default_rng(21), (70, 90))[0]


@pytest.fixture(scope="module")
def filled(tmp_path_factory, backbone, image):
    """A cache folder holding the one image's entry (the encoder runs once for the whole module)."""
    root = tmp_path_factory.mktemp("cache")
    cache = EmbeddingCache(root, backbone)
    embedding, geometry = cache.get(image)
    assert cache.encoded == 1
    return root, embedding, geometry


@pytest.fixture
def copy(filled, tmp_path):
    root, embedding, geometry = filled
    target = tmp_path / "cache"
    shutil.copytree(root, target)
    return target, embedding, geometry


def _entries(root):
    return sorted(root.rglob("*.pt"))


def _no_tmp_files(root):
    assert not list(root.rglob("*.tmp")), list(root.rglob("*.tmp"))


def test_layout_and_key(filled, backbone, image):
    root, embedding, geometry = filled
    key = content_hash(image)
    entries = _entries(root)
    assert entries == [root / backbone.identity / PREPROCESS_VERSION / key[:2] / f"{key}.pt"]
    assert embedding.shape == backbone.embedding_shape and embedding.dtype == torch.float32
    assert (geometry.height, geometry.width, geometry.size) == (70, 90, 256)
    _no_tmp_files(root)


def test_embedding_is_the_encoder_output(filled, backbone, image):
    _, embedding, _ = filled
    tensor, _ = preprocess_image(image, backbone.image_size)
    direct = encode_batch(backbone, tensor[None])[0]
    assert torch.allclose(embedding, direct, atol=1e-2 * float(direct.abs().max()))  # stored as float16


def test_round_trip_and_hits(copy, backbone, image):
    root, embedding, geometry = copy
    cache = EmbeddingCache(root, backbone)
    again, geometry2 = cache.get(image)
    assert cache.encoded == 0  # read from disk, not encoded
    assert torch.equal(again, embedding) and geometry2 == geometry
    cache.get(image)
    cache.get(image.copy())
    assert cache.encoded == 0
    _no_tmp_files(root)


def test_get_many_reads_paths_and_keys_on_pixels_not_bytes(tmp_path, backbone, image):
    png, tiff = tmp_path / "a.png", tmp_path / "a.tiff"
    Image.fromarray(image).save(png)
    Image.fromarray(image).save(tiff)
    assert png.read_bytes() != tiff.read_bytes()
    cache = EmbeddingCache(tmp_path / "cache", backbone)
    results = cache.get_many([png, str(tiff), image.astype(np.float32)], progress=False)
    assert cache.encoded == 1  # same pixels as read (float32), one entry
    assert len(_entries(tmp_path / "cache")) == 1
    first = results[0][0]
    for got, geometry in results:
        assert torch.equal(got, first) and geometry.height == 70
    again, _ = cache.get(image.astype(np.float32))  # a second get on the same instance is a hit
    assert cache.encoded == 1 and torch.equal(again, first)
    _no_tmp_files(tmp_path)


def test_content_hash():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert content_hash(a) == content_hash(a.copy())
    assert content_hash(a) != content_hash(a.reshape(4, 3))  # shape is part of the key
    b = a.copy()
    b[0, 0] = 1
    assert content_hash(a) != content_hash(b)
    assert content_hash(a[:, ::2]) == content_hash(np.ascontiguousarray(a[:, ::2]))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "wrong_key"])
def test_corrupt_or_stale_entry_is_recomputed(copy, backbone, image, damage):
    root, embedding, _ = copy
    (entry,) = _entries(root)
    if damage == "truncate":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 3])
    elif damage == "garbage":
        entry.write_bytes(b"\x00garbage" * 100)
    elif damage == "wrong_shape":
        torch.save({"key": entry.stem, "embedding": torch.zeros(8, 4, 4), "geometry": (70, 90, 256)}, entry)
    else:
        torch.save({"key": "0" * 64, "embedding": torch.zeros(256, 64, 64), "geometry": (70, 90, 256)}, entry)
    cache = EmbeddingCache(root, backbone)
    assert cache.load(entry.stem) is None
    again, geometry = cache.get(image)
    assert cache.encoded == 1
    assert torch.allclose(again, embedding, atol=1e-2 * float(embedding.abs().max()))
    assert geometry.height == 70
    # the entry was rewritten and is good again
    fresh = EmbeddingCache(root, backbone)
    assert torch.equal(fresh.get(image)[0], again) and fresh.encoded == 0
    _no_tmp_files(root)


def test_other_backbone_identity_uses_another_entry(copy, backbone, image, monkeypatch):
    root, _, _ = copy
    monkeypatch.setattr(backbone, "identity", "tiny_random-other-weights")
    cache = EmbeddingCache(root, backbone)
    cache.get(image)
    assert cache.encoded == 1
    assert len(_entries(root)) == 2
    assert (root / "tiny_random-other-weights").is_dir()
    _no_tmp_files(root)


def test_other_preprocess_version_uses_another_entry(copy, backbone, image, monkeypatch):
    root, _, _ = copy
    monkeypatch.setattr(cache_module, "PREPROCESS_VERSION", "p-test")
    cache = EmbeddingCache(root, backbone)
    cache.get(image)
    assert cache.encoded == 1
    assert len(_entries(root)) == 2
    assert (root / backbone.identity / "p-test").is_dir()
    _no_tmp_files(root)


def test_failed_write_leaves_no_temporary_file(tmp_path, backbone, monkeypatch):
    cache = EmbeddingCache(tmp_path, backbone)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cache.store("ab" + "0" * 62, torch.zeros(backbone.embedding_shape), preprocess_image(np.zeros((4, 4)), 8)[1])
    _no_tmp_files(tmp_path)
    assert not _entries(tmp_path)


def test_many_misses_go_through_openvino_with_pytorchs_embeddings(tmp_path, image, backbone):
    """tiny_random has LiteMedSAM's TinyViT encoder, so this is the graph the cache really exports."""
    images = [image, np.fliplr(image).copy()]
    eager = EmbeddingCache(tmp_path / "eager", backbone, openvino_from=None).get_many(images, progress=False)
    assert not list((tmp_path / "eager").rglob("*.onnx"))  # PyTorch only
    fast = EmbeddingCache(tmp_path / "fast", backbone, openvino_from=2)
    results = fast.get_many(images, progress=False)
    exported = onnx_file(backbone, tmp_path / "fast")
    assert exported.is_file() and fast.encoded == 2
    for (a, _), (b, _) in zip(eager, results):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=0)  # float16 storage either way
    before = exported.stat().st_mtime_ns
    again = EmbeddingCache(tmp_path / "fast", backbone, openvino_from=100)  # one miss, but the export is on disk
    assert again._encoder(1) is not None and exported.stat().st_mtime_ns == before  # reused, not exported again
    assert EmbeddingCache(tmp_path / "other", backbone, openvino_from=100)._encoder(1) is None  # too few to export


def test_openvino_encoder_matches_pytorch_on_litemedsam(tmp_path):
    """The tolerance the cache relies on, on the real weights: far below float16's rounding of the stored entry."""
    lite = lite_blob()
    backbone = lite["backbone"]
    encoder = OpenVinoEncoder(export_encoder(backbone, tmp_path / "lite.onnx"))
    images = torch.stack([preprocess_image(lite["image"], backbone.image_size)[0],
                          preprocess_image(np.flipud(lite["image"]).copy(), backbone.image_size)[0]])
    fast = encoder(images)
    reference = encode_batch(backbone, images)
    assert fast.shape == reference.shape == (2, *backbone.embedding_shape)
    assert (fast - reference).abs().max() < 1e-4 * reference.abs().max()
    assert sys.modules["openvino_telemetry"] is None  # OpenVINO's usage statistics never loaded: nothing sent


def test_an_encoder_openvino_cannot_build_falls_back_to_pytorch(tmp_path, image, backbone, monkeypatch):
    def broken_export(*args, **kwargs):
        raise RuntimeError("exporter broke")

    other = micro_backbone()  # a new backbone object: no OpenVINO encoder was built for it
    monkeypatch.setattr(openvino_module, "export_encoder", broken_export)
    with pytest.warns(UserWarning, match="OpenVINO encoder unavailable.*exporter broke"):
        results = EmbeddingCache(tmp_path, other, openvino_from=1).get_many([image], progress=False)
    reference = encode_batch(other, preprocess_image(image, other.image_size)[0][None])[0]
    torch.testing.assert_close(results[0][0], reference, atol=2e-3, rtol=0)
    assert openvino_module._BUILT[other] is False  # not retried on every call
