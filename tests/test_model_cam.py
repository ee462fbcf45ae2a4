"""The presence classifier's own map (CAM), and CAM -> box / point prompts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.adasam import AdaSam, AdaSamConfig, whole_box
from model.cam import activation_map, cam_peaks, cam_to_box, central_box
from model.heads import LocationClassifier, SharedAdapter, position_channels
from model.losses import map_loss
from model_fixtures import micro_backbone, one_torch_thread  # noqa: F401 (autouse)


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return LocationClassifier(32).eval()


def test_map_shape_range_and_pooled_presence(classifier):
    features = torch.randn(3, 32, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cam, logits = activation_map(classifier, features)
    assert cam.shape == (3, 16, 16) and logits.shape == (3, 2)
    assert float(cam.min()) >= 0.0 and float(cam.max()) <= 1.0
    with torch.no_grad():
        z = classifier.location_logits(features)
    assert torch.allclose(cam, torch.sigmoid(z))  # an absolute probability, not min-max normalised
    # the image logit is a smooth maximum: between the mean and the maximum of the location logits
    pooled = logits[:, 1]
    assert (pooled <= z.flatten(1).max(1).values + 1e-5).all() and (pooled >= z.flatten(1).mean(1) - 1e-5).all()
    assert torch.equal(logits[:, 0], torch.zeros(3)) and torch.allclose(logits, classifier(features).detach())


def test_map_and_pooling_ignore_padding(classifier):
    features = torch.randn(2, 32, 16, 16, generator=torch.Generator().manual_seed(2))
    valid = torch.zeros(2, 16, 16)
    valid[0, :10, :] = 1
    valid[1, :, :6] = 1
    with torch.no_grad():
        cam, logits = activation_map(classifier, features, valid)
    assert float(cam[0, 10:].abs().max()) == 0.0 and float(cam[1, :, 6:].abs().max()) == 0.0
    # ... while over the real image it is the map itself (positive everywhere), not zeros
    with torch.no_grad():
        full = torch.sigmoid(classifier.location_logits(features))
    assert torch.allclose(cam[0, :10], full[0, :10]) and torch.allclose(cam[1, :, :6], full[1, :, :6])
    assert float(cam[0, :10].min()) > 0 and float(cam[1, :, :6].min()) > 0
    assert torch.allclose(logits, classifier.pool(classifier.location_logits(features), valid))
    # a padded location, however bright, does not make the image present
    z = torch.full((2, 16, 16), -5.0)
    z[0, 12:] = 50.0
    z[1, :, 8:] = 50.0
    assert torch.allclose(classifier.pool(z, valid)[:, 1], torch.tensor([-5.0, -5.0]))
    assert (classifier.pool(z)[:, 1] > 10).all()


def test_map_is_bright_where_the_pooled_logit_is_taught_the_target_lies():
    """Masks teach the map location by location; its box is then the target's box."""
    torch.manual_seed(0)
    head = LocationClassifier(8, hidden=8, dropout=0.0, dilations=(1,))
    features = torch.zeros(4, 8, 16, 16)
    target = torch.zeros(4, 16, 16)
    for k, (y, x) in enumerate([(2, 3), (8, 9), (4, 10), (10, 2)]):
        features[k, 0, y:y + 4, x:x + 4] = 1.0
        target[k, y:y + 4, x:x + 4] = 1.0
    features[:, 1:] = torch.rand(4, 7, 16, 16)  # channels that say nothing
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        map_loss(head.location_logits(features), target, torch.ones_like(target)).backward()
        optimizer.step()
    test = torch.zeros(1, 8, 16, 16)
    test[0, 0, 4:8, 10:14] = 1.0
    test[0, 1:] = torch.rand(7, 16, 16)
    cam, logits = activation_map(head.eval(), test)
    box, fallback = cam_to_box(cam[0].detach().numpy(), 0.5, scale=4.0)
    assert not fallback and box.tolist() == [40, 16, 56, 32]
    empty = torch.zeros(1, 8, 16, 16)
    empty[0, 1:] = torch.rand(7, 16, 16)
    empty_present = float(activation_map(head, empty)[1].detach().softmax(1)[0, 1])
    assert empty_present < 0.5 < float(logits.detach().softmax(1)[0, 1])


def test_the_map_trains_the_adapter_under_it():
    adapter, classifier = SharedAdapter(32), LocationClassifier(32)
    embeddings = torch.randn(2, 32, 16, 16)
    cam, logits = activation_map(classifier, adapter(embeddings))
    assert cam.requires_grad and logits.requires_grad
    cam[:, :4, :4].mean().backward()
    assert classifier.out.weight.grad.abs().sum() > 0
    assert adapter.block[-1].weight.grad.abs().sum() > 0  # the gradient-feedback path reaches the adapter


def test_cam_to_box_one_rectangle():
    cam = np.zeros((64, 64), np.float32)
    cam[10:20, 20:40] = 1.0
    cam[30, 5] = 0.2  # below the threshold: ignored
    box, fallback = cam_to_box(cam, threshold=0.4, scale=4.0)
    assert not fallback
    assert box.tolist() == [80, 40, 160, 80]  # (x0, y0, x1, y1) of cells 20..39 x 10..19, exclusive, times 4
    box, _ = cam_to_box(cam, threshold=0.4, scale=2.5)
    np.testing.assert_allclose(box, [50, 25, 100, 50])


def test_cam_to_box_threshold_is_used():
    cam = np.zeros((64, 64), np.float32)
    cam[10:20, 10:20] = 1.0
    cam[8:22, 8:22] = np.maximum(cam[8:22, 8:22], 0.5)
    assert cam_to_box(cam, threshold=0.4)[0].tolist() == [32, 32, 88, 88]
    assert cam_to_box(cam, threshold=0.6)[0].tolist() == [40, 40, 80, 80]


@pytest.mark.parametrize("cam", [np.zeros((64, 64), np.float32), np.full((64, 64), 0.3, np.float32),
                                 np.full((64, 64), np.nan, np.float32)])
def test_cam_to_box_fallback(cam):
    box, fallback = cam_to_box(cam, threshold=0.4, scale=4.0, valid_hw=(200, 256))
    assert fallback
    np.testing.assert_allclose(box, central_box(200, 256))
    np.testing.assert_allclose(box, [64, 50, 192, 150])
    box, fallback = cam_to_box(cam, threshold=0.4, scale=4.0)
    assert fallback and box.tolist() == [64, 64, 192, 192]


def test_cam_to_box_peak_ignores_a_weaker_hot_spot():
    cam = np.zeros((64, 64), np.float32)
    cam[5:15, 5:15] = 1.0
    cam[40:50, 40:60] = 0.6
    peak, fallback = cam_to_box(cam, threshold=0.4, scale=4.0, component="peak")
    assert not fallback and peak.tolist() == [20, 20, 60, 60]
    both, _ = cam_to_box(cam, threshold=0.4, scale=4.0, component="all")
    assert both.tolist() == [20, 20, 240, 200]
    # whichever region holds the maximum wins, wherever it is
    cam[45, 45] = 1.5
    assert cam_to_box(cam, threshold=0.4, scale=4.0, component="peak")[0].tolist() == [160, 160, 240, 200]


def test_cam_to_box_is_clipped_to_the_valid_area():
    cam = np.zeros((64, 64), np.float32)
    cam[0:64, 30:64] = 1.0
    box, _ = cam_to_box(cam, threshold=0.4, scale=4.0, valid_hw=(256, 200))
    assert box.tolist() == [120, 0, 200, 256]


def test_cam_peaks():
    cam = np.zeros((64, 64), np.float32)
    cam[30, 12] = 1.0
    cam[50, 50] = 0.7
    cam[52, 52] = 0.6  # within min_distance of the 0.7 peak: not a separate peak
    (point,) = cam_peaks(cam, count=1, scale=4.0)
    np.testing.assert_allclose(point, [12 * 4 + 2, 30 * 4 + 2])
    points = cam_peaks(cam, count=5, scale=4.0, min_distance=4)
    np.testing.assert_allclose(points, [[50, 122], [202, 202]])
    assert cam_peaks(np.zeros((8, 8), np.float32), count=2).shape == (0, 2)


def test_auto_boxes_cam_or_whole_image():
    backbone = micro_backbone()
    cams = torch.zeros(2, 16, 16)
    cams[0, 2:6, 3:9] = 1.0  # image 1: nothing above the threshold
    adasam = AdaSam(AdaSamConfig(backbone="micro"), backbone)
    boxes, fallbacks = adasam.auto_boxes(cams, [(64, 50), (40, 64)])
    assert adasam.cam_scale == 4.0
    assert fallbacks == [False, True]
    assert boxes[0].tolist() == [12, 8, 36, 24]
    np.testing.assert_allclose(boxes[1].numpy(), central_box(40, 64))
    supervised = AdaSam(AdaSamConfig(backbone="micro", method="supervised"), backbone)
    boxes, fallbacks = supervised.auto_boxes(cams, [(64, 50), (40, 64)])
    assert fallbacks == [False, False]
    np.testing.assert_allclose(boxes.numpy(), np.stack([whole_box((64, 50)), whole_box((40, 64))]))
    assert whole_box((40, 64)).tolist() == [0, 0, 64, 40]


def test_the_first_convolution_reads_features_and_position_as_one_concatenation_would():
    """The head never builds [features, position channels]: its two-part convolution must equal the one over them."""
    head = LocationClassifier(32, dropout=0.0)
    with torch.no_grad():
        head.reduce[0].bias.normal_()
    features = torch.randn(3, 32, 16, 16)
    concatenated = head.reduce[0](torch.cat([features, position_channels(features)], 1))
    torch.testing.assert_close(head._reduce_conv(features), concatenated, atol=1e-5, rtol=1e-5)
