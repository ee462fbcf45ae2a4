"""The one preprocessing path: intensity, channels, geometry, and how masks, boxes and logits follow the image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.cam import cam_to_box
from model.metrics import dice
from model.preprocess import (Geometry, ImageReadError, box_to_model, box_to_original, logits_to_original,
                              mask_box, normalise_intensity, preprocess_image, preprocess_mask, read_image,
                              read_mask)
from model_fixtures import blob_image, one_torch_thread  # noqa: F401 (autouse)


@pytest.mark.parametrize("shape, size, resized", [((96, 112), 256, (219, 256)), ((120, 80), 64, (64, 43)),
                                                  ((256, 256), 256, (256, 256)), ((10, 300), 256, (9, 256))])
def test_geometry(shape, size, resized):
    g = Geometry(*shape, size)
    assert g.scale == pytest.approx(size / max(shape))
    assert g.resized == resized
    assert max(g.resized) == size


@pytest.mark.parametrize("shape", [(96, 112), (120, 80), (600, 400)])
def test_box_round_trip(shape):
    g = Geometry(*shape, 256)
    box = np.array([3.0, 7.5, shape[1] * 0.6, shape[0] - 1], dtype=np.float32)
    model_box = box_to_model(box, g)
    np.testing.assert_allclose(model_box, box * 256 / max(shape), rtol=1e-6)
    np.testing.assert_allclose(box_to_original(model_box, g), box, atol=1e-3)


def test_box_to_original_clips_to_the_image():
    g = Geometry(100, 50, 256)  # resized 256 x 128; the right half of the input is padding
    out = box_to_original([-10, -10, 250, 300], g)
    assert out.tolist() == [0, 0, 50, 100]  # edges: the far one lies just past the last pixel


def _check_normalised(tensor: torch.Tensor, size: int) -> None:
    assert tensor.shape == (3, size, size)
    assert tensor.dtype == torch.float32
    assert torch.isfinite(tensor).all()
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0
    assert float(tensor.max()) > 0.9  # uses the range (antialiased resizing may shave the very top)


def test_16_bit_image_from_file_normalises(tmp_path):
    rng = np.random.default_rng(0)
    image16 = rng.integers(1000, 60000, (40, 50)).astype(np.uint16)
    path = tmp_path / "ct16.png"
    Image.fromarray(image16).save(path)
    array = read_image(path)
    assert array.ndim == 2 and array.max() > 255  # the 16-bit range is kept, not squashed to 8 bits on read
    np.testing.assert_array_equal(array, image16.astype(np.float32))
    tensor, g = preprocess_image(array, 64)
    _check_normalised(tensor, 64)
    assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[1], tensor[2])  # grey -> 3 equal channels
    h, w = g.resized
    assert (h, w) == (51, 64)
    assert float(tensor[:, h:, :].abs().max()) == 0.0  # padding at the bottom is zero


def test_16_bit_and_8_bit_versions_of_an_image_agree():
    image8, _ = blob_image(np.random.default_rng(1), (40, 40))
    a = normalise_intensity(image8)
    b = normalise_intensity(image8.astype(np.uint16) * 257)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_rgb_and_rgba_images_normalise_to_three_channels(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (30, 20, 3)).astype(np.uint8)
    rgb[..., 0] = 255  # a red cast: the channels must stay different (colour kept, not greyed)
    tensor, g = preprocess_image(rgb, 32)
    _check_normalised(tensor, 32)
    assert not torch.equal(tensor[0], tensor[2])
    assert g.resized == (32, 21)
    assert float(tensor[:, :, 21:].abs().max()) == 0.0  # padding on the right
    rgba = np.concatenate([rgb, np.full((30, 20, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    array = read_image(tmp_path / "rgba.png")
    assert array.shape == (30, 20, 3)
    np.testing.assert_array_equal(array, rgb.astype(np.float32))


def test_constant_image_gives_no_nan():
    tensor, _ = preprocess_image(np.full((20, 20), 77, np.uint8), 32)
    assert torch.isfinite(tensor).all()
    assert float(tensor.min()) >= 0 and float(tensor.max()) <= 1


@pytest.mark.parametrize("shape, size", [((96, 112), 256), ((120, 80), 256), ((96, 112), 64), ((150, 90), 64)])
def test_mask_aligns_with_image(shape, size):
    image, mask = blob_image(np.random.default_rng(3), shape)
    tensor, g = preprocess_image(image, size)
    small = preprocess_mask(mask, size)
    assert small.shape == (1, size, size)
    assert set(torch.unique(small).tolist()) <= {0.0, 1.0}
    # The mask's box after preprocessing is the original box mapped by box_to_model, within a pixel
    # (mask_box's far edges lie past the last pixel, so the scale applies to whole pixels).
    expected = box_to_model(mask_box(mask), g)
    got = mask_box(small[0])
    np.testing.assert_allclose(got, expected, atol=1.0)
    # and the mask sits on the bright blob of the preprocessed image
    inside = tensor[0][small[0] > 0].mean()
    outside = tensor[0][:g.resized[0], :g.resized[1]][small[0][:g.resized[0], :g.resized[1]] == 0].mean()
    assert inside > outside + 0.3


@pytest.mark.parametrize("shape", [(96, 112), (150, 90)])
@pytest.mark.parametrize("logit_side", [256, 64])
def test_logits_to_original_round_trip(shape, logit_side):
    _, mask = blob_image(np.random.default_rng(4), shape)
    g = Geometry(*shape, 256)
    small = preprocess_mask(mask, 256)
    if logit_side != 256:
        small = torch.nn.functional.interpolate(small[None], size=(logit_side, logit_side), mode="area")[0]
    logits = (small - 0.5) * 20
    out = logits_to_original(logits, g)
    assert out.shape == (1, *shape)
    assert dice(out[0].numpy() > 0, mask) > (0.97 if logit_side == 256 else 0.9)


def test_logits_to_original_batch():
    g = Geometry(30, 40, 64)
    out = logits_to_original(torch.randn(3, 1, 16, 16), g)
    assert out.shape == (3, 30, 40)


def test_mask_box():
    mask = np.zeros((10, 12), bool)
    assert mask_box(mask) is None
    assert mask_box(torch.zeros(5, 5)) is None
    mask[2:5, 3:9] = True
    assert mask_box(mask).tolist() == [3, 2, 9, 5]  # far edges one past the last pixel, as a prompt's
    assert mask_box(torch.from_numpy(mask).float()).tolist() == [3, 2, 9, 5]
    # the CAM's box of the same region, at a quarter of the size, is the same box scaled: one convention for both
    cam_box, fallback = cam_to_box(mask.astype(np.float32), threshold=0.5, scale=4.0)
    assert not fallback and cam_box.tolist() == [12, 8, 36, 20]


def test_unreadable_image_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image\nsecond line\n")
    with pytest.raises(ImageReadError) as err:
        read_image(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_degenerate_image_shape_is_rejected(tmp_path):
    Image.fromarray(np.zeros((1, 30), np.uint8)).save(tmp_path / "line.png")
    with pytest.raises(ImageReadError, match="unusable image shape"):
        read_image(tmp_path / "line.png")


def test_read_mask_checks_size_and_binarises(tmp_path):
    values = np.zeros((20, 30), np.uint8)
    values[5:10, 5:10] = 1  # a 0/1 mask (not 0/255) is still a mask
    Image.fromarray(values).save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png", (20, 30))
    assert mask.dtype == bool and mask.sum() == 25
    with pytest.raises(ImageReadError) as err:
        read_mask(tmp_path / "m.png", (21, 30))
    message = str(err.value)
    assert "30x20" in message and "30x21" in message and str(tmp_path / "m.png") in message
    assert "\n" not in message



@pytest.mark.parametrize("size", [256, 64])
def test_a_downsampled_mask_keeps_its_place(size):
    """Masks sampled at pixel centres: torch's "nearest" samples each pixel's top-left corner, which moved every
    training target half a model pixel down and right of its image (a 0.97 round-trip Dice at 256 px on BUSI). Edges
    snap to whole model pixels, so the shift is measured as the mean over rectangles at many offsets."""
    errors = []
    for offset in range(40):
        mask = np.zeros((600, 500), bool)
        mask[200 + offset:330 + offset, 120 + offset:300 + offset] = True
        g = Geometry(*mask.shape, size)
        ys, xs = np.nonzero(preprocess_mask(mask, size)[0].numpy())
        centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5])  # model pixels' centres
        stretch = np.array([g.resized[1] / 500, g.resized[0] / 600])  # as the image is resized
        errors.append(centre - np.array([210 + offset, 265 + offset]) * stretch)
    np.testing.assert_allclose(np.mean(errors, axis=0), 0, atol=0.1)  # in model pixels; "nearest" gives +0.5
