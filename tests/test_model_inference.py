"""Automatic prediction, click/box refinement, uncertainty scores, evaluation and overlays."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from model.adasam import AdaSam, AdaSamConfig
from model.evaluate import Item, evaluate
from model.inference import CLICK_PART_SHARES, Predictor, clicks_as_box, cut_outside, part_box, valid_grid
from model.overlay import cam_overlay, display_image
from model.preprocess import Geometry, box_to_model, logits_to_original, mask_box
from model.uncertainty import (binary_entropy, classifier_uncertainty, combined_uncertainty,
                               mc_dropout_probability, segmentation_uncertainty)
from model_fixtures import (blob_items, lite_blob, micro_backbone, one_torch_thread,  # noqa: F401 (autouse)
                            shared_backbone, tiny_blob_items)


@pytest.fixture(scope="module")
def items():
    """Three 96 x 112 blob images (the first without a blob) and one 120 x 80, encoded by tiny_random."""
    tall = blob_items(shared_backbone("tiny_random"), 1, seed=6, size=(120, 80), prefix="tall")
    return list(tiny_blob_items()) + tall


def _model(**config) -> AdaSam:
    torch.manual_seed(0)
    return AdaSam(AdaSamConfig(backbone="tiny_random", **config), shared_backbone("tiny_random")).eval()


@pytest.fixture(scope="module")
def predictions(items):
    return Predictor(_model()).predict_batch(torch.stack([i.embedding for i in items]), [i.geometry for i in items])


def _in_unit_interval(value: float) -> bool:
    return 0.0 <= value <= 1.0


def test_prediction_is_at_original_size(items, predictions):
    for item, p in zip(items, predictions):
        shape = (item.geometry.height, item.geometry.width)
        assert p.mask.shape == p.raw_mask.shape == p.cam.shape == shape
        assert p.mask.dtype == bool and p.raw_mask.dtype == bool
        assert _in_unit_interval(p.probability)
        assert float(p.cam.min()) >= 0.0 and float(p.cam.max()) <= 1.0
        for value in (p.uncertainty.classifier, p.uncertainty.segmentation, p.uncertainty.combined):
            assert _in_unit_interval(value)
        assert p.box.shape == (4,)
        assert 0 <= p.box[0] <= p.box[2] <= shape[1] and 0 <= p.box[1] <= p.box[3] <= shape[0]  # edges
        gated = p.probability >= 0.5
        assert np.array_equal(p.mask, p.raw_mask if gated else np.zeros_like(p.raw_mask))


def test_batch_equals_one_by_one(items, predictions):
    predictor = Predictor(_model())
    for item, batched in zip(items, predictions):
        alone = predictor.predict(item.embedding, item.geometry)
        assert alone.probability == pytest.approx(batched.probability, abs=1e-5)
        assert np.mean(alone.raw_mask != batched.raw_mask) < 0.001
        np.testing.assert_allclose(alone.cam, batched.cam, atol=1e-4)
        np.testing.assert_allclose(alone.box, batched.box, atol=1e-3)


def test_presence_threshold_gates_the_mask(items):
    item = items[1]
    never = Predictor(_model(presence_threshold=1.01)).predict(item.embedding, item.geometry)
    always = Predictor(_model(presence_threshold=0.0)).predict(item.embedding, item.geometry)
    assert not never.mask.any() and never.raw_mask.any()
    assert np.array_equal(always.mask, always.raw_mask)


@pytest.mark.parametrize("config", [{"method": "supervised"}, {"has_negatives": False}])
def test_presence_is_assumed_without_a_classifier_to_ask(items, config):
    item = items[0]
    p = Predictor(_model(**config)).predict(item.embedding, item.geometry)
    assert p.probability == 1.0 and np.array_equal(p.mask, p.raw_mask)
    assert p.uncertainty.classifier == pytest.approx(0.0, abs=1e-4)


def test_supervised_and_whole_prompt_use_the_whole_image(items):
    item = items[2]
    for config in ({"method": "supervised", "cascade": 0}, {"prompt": "whole", "cascade": 0}):
        p = Predictor(_model(**config)).predict(item.embedding, item.geometry)
        np.testing.assert_allclose(p.box, [0, 0, item.geometry.width, item.geometry.height], atol=0.5)  # edges
        assert not p.box_is_fallback


def test_default_presence_threshold_gates_at_one_half(items):
    """Shifting the classifier's output bias moves the presence logit by exactly that much (a smooth maximum of
    shifted location logits), so P(present) can be put just either side of the default threshold of 0.5."""
    item = items[1]
    unshifted = Predictor(_model()).predict(item.embedding, item.geometry).probability
    logit = math.log(unshifted / (1 - unshifted))
    for shift, gated in ((0.05, True), (-0.05, False)):
        shifted = _model()
        with torch.no_grad():
            shifted.classifier.out.bias += shift - logit
        p = Predictor(shifted).predict(item.embedding, item.geometry)
        assert p.probability == pytest.approx(1 / (1 + math.exp(-shift)), abs=1e-4)
        assert p.raw_mask.any()
        assert np.array_equal(p.mask, p.raw_mask if gated else np.zeros_like(p.raw_mask)), shift


def test_dropout_samples(items):
    """With samples > 1 the probability is a Monte-Carlo mean with the classifier's dropout on: not the one
    deterministic pass, yet the same as it for a classifier without dropout (so dropout alone makes the difference)."""
    item = items[1]
    model = _model()
    plain = Predictor(model).predict(item.embedding, item.geometry)
    torch.manual_seed(0)
    p = Predictor(model, dropout_samples=8).predict(item.embedding, item.geometry)
    assert _in_unit_interval(p.probability) and _in_unit_interval(p.uncertainty.combined)
    assert not model.training and not model.classifier.training
    assert abs(p.probability - plain.probability) > 1e-3
    assert p.uncertainty.classifier == pytest.approx(float(binary_entropy(torch.tensor(p.probability))), abs=1e-5)
    assert np.array_equal(p.raw_mask, plain.raw_mask)  # dropout touches the presence probability only
    no_dropout = _model(classifier_dropout=0.0)
    sampled = Predictor(no_dropout, dropout_samples=8).predict(item.embedding, item.geometry).probability
    assert sampled == pytest.approx(Predictor(no_dropout).predict(item.embedding, item.geometry).probability, abs=1e-6)
    assert sampled == pytest.approx(plain.probability, abs=1e-6)  # same weights as `model`


def test_refine_needs_a_prompt(items):
    with pytest.raises(ValueError, match="at least one click or a box"):
        Predictor(_model()).refine(items[1].embedding, items[1].geometry)


def test_refine_positive_vs_negative_click(items):
    item = items[1]
    predictor = Predictor(_model())
    ys, xs = np.nonzero(item.mask)
    centre = (float(xs.mean()), float(ys.mean()))
    positive = predictor.refine(item.embedding, item.geometry, positive=[centre])
    negative = predictor.refine(item.embedding, item.geometry, negative=[centre])
    assert positive.shape == negative.shape == item.mask.shape and positive.dtype == bool
    assert (positive != negative).sum() > 100


def test_clicks_as_box_widen_for_positives_and_cut_for_negatives():
    box = (10.0, 20.0, 50.0, 60.0)
    assert clicks_as_box(box, [(70.0, 30.0)], [], pad=5) == (10, 20, 75, 60)  # widened to the click plus the pad
    assert clicks_as_box(box, [(30.0, 40.0)], [], pad=5) == (10, 20, 50, 60)  # inside: the box already has it
    assert clicks_as_box(box, [], [(14.0, 40.0)], pad=5) == (15, 20, 50, 60)  # the nearest edge (left) moves past
    assert clicks_as_box(box, [], [(30.0, 57.0)], pad=5) == (10, 20, 50, 56)  # bottom
    assert clicks_as_box(box, [], [(80.0, 80.0)], pad=5) == box  # outside: nothing to cut


def test_a_negative_click_moves_the_edge_that_cuts_least_of_the_mask():
    box, mask = (10.0, 20.0, 50.0, 60.0), np.zeros((70, 60), bool)
    mask[20:60, 10:30] = True  # the target fills the box's left half
    assert clicks_as_box(box, [], [(32.0, 22.0)], pad=5) == (10, 23, 50, 60)  # no mask: the nearest edge (top)
    assert clicks_as_box(box, [], [(32.0, 22.0)], pad=5, mask=mask) == (10, 20, 31, 60)  # the right: cuts nothing
    assert clicks_as_box(box, [], [(32.0, 22.0)], 5, np.zeros_like(mask)) == (10, 23, 50, 60)  # all equal: nearest
    # a second click is weighed on what the first left: moving the bottom edge cuts 3 of its 40 rows, the least
    assert clicks_as_box(box, [], [(32.0, 22.0), (20.0, 57.0)], 5, mask) == (10, 20, 31, 56)


def test_a_box_trained_decoder_gets_clicks_as_box_edits(items, monkeypatch):
    item = items[1]
    predictor = Predictor(_model())
    box, click, other = (20.0, 15.0, 60.0, 50.0), (75.0, 40.0), (30.0, 45.0)
    assert shared_backbone("litemedsam").box_prompts and not predictor.model.backbone.box_prompts  # MedSAM's, SAM's
    with_points = predictor.refine(item.embedding, item.geometry, positive=[click], negative=[other], box=box)
    monkeypatch.setattr(predictor.model.backbone, "box_prompts", True)
    pad = 0.05 * max(item.geometry.height, item.geometry.width)
    widened = clicks_as_box(box, [click], [], pad)
    edited = clicks_as_box(widened, [], [other], pad, predictor.refine(item.embedding, item.geometry, box=widened))
    as_box, used = predictor.redraw(item.embedding, item.geometry, positive=[click], negative=[other], box=box)
    assert used == edited != clicks_as_box(box, [click], [other], pad)  # not the nearest edge (the bottom) here
    expected = predictor.refine(item.embedding, item.geometry, box=edited)
    if not expected[int(click[1]), int(click[0])]:  # the click's own part box, when the box's mask misses it
        expected |= predictor.refine(item.embedding, item.geometry, box=part_box(edited, *click))
    assert np.array_equal(as_box, expected)
    assert not np.array_equal(as_box, with_points)
    clicks_only, started = predictor.redraw(item.embedding, item.geometry, positive=[click])  # no box: one starts
    assert started == predictor.start_box(item.geometry, [click])  # at the click, not the clicks as points
    assert np.array_equal(clicks_only, predictor.redraw(item.embedding, item.geometry, [click], box=started)[0])


def test_positive_clicks_far_from_the_box_start_a_box_of_their_own(items, monkeypatch):
    """A + click far from the proposal's box is on a target the proposal missed: widening the box to it spanned both
    (BUSI val: whole misses took 8-10 clicks); the new box is the size the decoder's IoU estimate rates best."""
    item = items[1]
    predictor = Predictor(_model())
    monkeypatch.setattr(predictor.model.backbone, "box_prompts", True)
    geometry, pad = item.geometry, 0.05 * max(item.geometry.height, item.geometry.width)
    box = (10.0, 10.0, 30.0, 26.0)  # + clicks within 10 beside it or 8 above or below widen it, farther ones start
    near, far = (38.5, 20.5), (80.5, 70.5)
    assert predictor.redraw(item.embedding, geometry, [near], box=box)[1] == clicks_as_box(box, [near], [], pad)
    mask, started = predictor.redraw(item.embedding, geometry, [far], [(20.5, 18.5)], box=box)
    assert started == predictor.start_box(geometry, [far]) and started[0] > 30
    below = (20.5, 35.5)  # 9.5 below: nearer than the box is wide, farther than it is high
    assert predictor.redraw(item.embedding, geometry, [below], box=box)[1] == predictor.start_box(geometry, [below])
    assert predictor.redraw(item.embedding, geometry, [near, far], box=box)[1] == clicks_as_box(box, [near, far], [],
                                                                                                 pad)
    candidates = [(max(0.0, far[0] - k * pad), max(0.0, far[1] - k * pad), min(float(geometry.width), far[0] + k * pad),
                   min(float(geometry.height), far[1] + k * pad)) for k in (1, 2, 4)]
    with torch.no_grad():
        features = predictor.model.features(item.embedding[None])
        ious = [float(predictor.model.segment(features, boxes=torch.from_numpy(box_to_model(b, geometry))[None])[1])
                for b in candidates]
    assert started == candidates[int(np.argmax(ious))] and len(set(ious)) == 3


def test_a_positive_click_the_box_mask_misses_adds_its_part_box(items, monkeypatch):
    item = items[1]
    predictor = Predictor(_model())
    monkeypatch.setattr(predictor.model.backbone, "box_prompts", True)
    box = (10.0, 10.0, 90.0, 80.0)
    whole = predictor.refine(item.embedding, item.geometry, box=box)
    assert whole.any() and not whole[10:80, 10:90].all()
    inner = [(x, y) for y in range(18, 73, 3) for x in range(18, 83, 3)]  # farther than the pad from the edges
    covered = next((x + 0.5, y + 0.5) for x, y in inner if whole[y, x])
    assert np.array_equal(predictor.refine(item.embedding, item.geometry, positive=[covered], box=box), whole)
    grown, steps = 0, set()
    missed = [(x, y) for x, y in inner if not whole[y, x]]
    for x, y in missed[:: max(1, len(missed) // 8)]:
        click = (x + 0.5, y + 0.5)
        refined = predictor.refine(item.embedding, item.geometry, positive=[click], box=box)
        expected = whole.copy()  # the box is not widened: the click is inside it
        for step, share in enumerate(CLICK_PART_SHARES):  # smaller part boxes while the click is missed
            if expected[y, x]:
                break
            steps.add(step)
            expected |= predictor.refine(item.embedding, item.geometry, box=part_box(box, *click, share))
        if not expected[y, x]:  # then the first part box with the click as a point
            steps.add("point")
            monkeypatch.setattr(predictor.model.backbone, "box_prompts", False)  # so refine sends box and point
            expected |= predictor.refine(item.embedding, item.geometry, box=part_box(box, *click), positive=[click])
            monkeypatch.setattr(predictor.model.backbone, "box_prompts", True)
        assert np.array_equal(refined, expected)
        grown += bool((refined & ~whole).any())
    assert grown > 0 and len(steps) > 1  # the rules change masks here, beyond the first part box
    decoded, decode = [], predictor._decode
    monkeypatch.setattr(predictor, "_decode", lambda *a, **k: decoded.append(1) or decode(*a, **k))
    click = (missed[0][0] + 0.5, missed[0][1] + 0.5)
    once = predictor.refine(item.embedding, item.geometry, positive=[click], box=box)
    calls = len(decoded)
    assert calls > 2 and np.array_equal(predictor.refine(item.embedding, item.geometry, positive=[click] * 3, box=box),
                                        once)
    assert len(decoded) == 2 * calls  # a click repeated is decoded once
    assert part_box(box, 20.0, 70.0) == (10.0, 52.5, 40.0, 80.0)  # a quarter of the box's sides each way, clipped


def test_a_negative_click_on_the_mask_beyond_the_box_removes_that_piece():
    mask = np.zeros((60, 80), bool)
    mask[20:40, 20:50] = True  # inside the box (20, 20, 50, 40) ...
    mask[25:30, 50:70] = True  # ... a spill past its right edge
    mask[38:48, 30:35] = True  # ... and one past its bottom edge
    box = (20.0, 20.0, 50.0, 40.0)
    cut = cut_outside(mask, box, [], [(60.5, 27.5)])
    assert not cut[25:30, 50:70].any() and cut[20:40, 20:50].all() and cut[40:48, 30:35].all()
    split = cut_outside(mask, box, [(65.5, 27.5)], [(55.5, 27.5)])  # a + click on it too: the part nearer it stays
    assert np.array_equal(split, mask & ~((np.arange(80)[None] < 60) & (np.arange(80)[None] >= 50)))
    assert np.array_equal(cut_outside(mask, box, [(65.5, 27.5), (52.5, 27.5)], [(58.5, 27.5)]),
                          mask & ~((np.arange(80)[None] >= 56) & (np.arange(80)[None] < 62)))  # the middle goes
    assert np.array_equal(cut_outside(mask, box, [], [(30.5, 30.5)]), mask)  # inside the box: clicks_as_box's job
    assert np.array_equal(cut_outside(mask, box, [], [(5.5, 5.5)]), mask)  # off the mask: nothing to remove
    edge = (19.5, 20.0, 50.0, 40.0)  # column 19's centre lies on the left edge: beyond the box for both rules
    spill = mask.copy()
    spill[30:32, 19] = True
    assert clicks_as_box(edge, [], [(19.5, 30.5)], pad=5) == edge
    assert np.array_equal(cut_outside(spill, edge, [], [(19.5, 30.5)]), mask)
    both = cut_outside(mask, box, [], [(60.5, 27.5), (32.5, 45.5)])
    assert np.array_equal(both, mask & ~np.isin(np.arange(80)[None], range(50, 80)) & ~(np.arange(60)[:, None] >= 40))


def test_refine_cuts_the_spill_a_negative_click_lies_on(items, monkeypatch):
    item = items[1]
    predictor = Predictor(_model())
    monkeypatch.setattr(predictor.model.backbone, "box_prompts", True)
    spill = np.zeros((item.geometry.height, item.geometry.width), bool)
    spill[20:40, 20:60] = True
    spill[28:32, 60:90] = True  # past the right edge of every box below
    monkeypatch.setattr(predictor, "_decode", lambda geometry, box=None, positive=(), negative=(): spill.copy())
    box = (20.0, 20.0, 60.0, 40.0)
    refined = predictor.refine(item.embedding, item.geometry, negative=[(80.5, 30.5)], box=box)
    assert np.array_equal(refined, spill & (np.arange(spill.shape[1]) < 60)[None])
    widened = predictor.refine(item.embedding, item.geometry, positive=[(70.5, 29.5)], negative=[(85.5, 30.5)],
                               box=box)
    x1 = predictor.redraw(item.embedding, item.geometry, [(70.5, 29.5)], [(85.5, 30.5)], box)[1][2]
    right = math.ceil(x1 - 0.5)  # the first column whose centre is not inside the widened box
    assert 70 < right < 85 and widened[28:32, 60:right].all() and not widened[:, right:].any()


def _stock_sam(item: Item, points=None, box=None) -> np.ndarray:
    """segment-anything's own prompt encoder + mask decoder, single-mask output, as SamPredictor runs them."""
    backbone = shared_backbone("tiny_random")
    g = item.geometry
    if points is not None:
        coords = torch.tensor([[list(p) for p, _ in points]], dtype=torch.float32) * g.scale
        points = (coords, torch.tensor([[float(label) for _, label in points]]))
    boxes = None if box is None else torch.from_numpy(box_to_model(box, g))[None]
    with torch.no_grad():
        sparse, dense = backbone.prompt_encoder(points=points, boxes=boxes, masks=None)
        logits, _ = backbone.mask_decoder(item.embedding[None], backbone.prompt_encoder.get_dense_pe(), sparse, dense,
                                          multimask_output=False)
    return (logits_to_original(logits[0], g)[0] > 0).numpy()


def test_refine_matches_segment_anything(items):
    """An untrained adapter is the identity, so refine must give exactly what stock SAM gives for the prompts."""
    item = items[1]
    predictor = Predictor(_model())
    click, other = (50.0, 40.0), (10.0, 80.0)
    box = (20.0, 15.0, 90.0, 70.0)
    assert np.array_equal(predictor.refine(item.embedding, item.geometry, positive=[click]),
                          _stock_sam(item, points=[(click, 1)]))
    assert np.array_equal(predictor.refine(item.embedding, item.geometry, positive=[click], negative=[other]),
                          _stock_sam(item, points=[(click, 1), (other, 0)]))
    assert np.array_equal(predictor.refine(item.embedding, item.geometry, box=box), _stock_sam(item, box=box))
    assert np.array_equal(predictor.refine(item.embedding, item.geometry, negative=[other], box=box),
                          _stock_sam(item, points=[(other, 0)], box=box))


def test_refine_reuses_features_of_the_same_image(items):
    predictor = Predictor(_model())
    a, b = items[1], items[2]
    predictor.refine(a.embedding, a.geometry, box=(10, 10, 50, 50))
    features = predictor._features
    predictor.refine(a.embedding, a.geometry, positive=[(20, 20)])
    assert predictor._features is features
    mask_b = predictor.refine(b.embedding, b.geometry, box=(10, 10, 50, 50))
    assert predictor._features is not features
    assert np.array_equal(mask_b, Predictor(_model()).refine(b.embedding, b.geometry, box=(10, 10, 50, 50)))


def test_refine_keeps_the_masks_it_decoded_for_the_image_being_edited(items, monkeypatch):
    predictor = Predictor(_model())
    a, b = items[1], items[2]
    decoded, decode = [], predictor._decode_once
    monkeypatch.setattr(predictor, "_decode_once", lambda *args, **k: decoded.append(1) or decode(*args, **k))
    first = predictor.refine(a.embedding, a.geometry, box=(10, 10, 50, 50))
    first[:] = ~first  # the caller's copy: what is kept does not change
    again = predictor.refine(a.embedding, a.geometry, box=(10, 10, 50, 50))
    assert len(decoded) == 1 and np.array_equal(again, ~first)
    other = predictor.refine(b.embedding, b.geometry, box=(10, 10, 50, 50))  # another image: decoded afresh
    assert len(decoded) == 2 and not np.array_equal(other, again)
    predictor.refine(a.embedding, a.geometry, box=(10, 10, 50, 50))
    assert len(decoded) == 3  # only the image being edited is kept


def test_valid_grid():
    grid = valid_grid([Geometry(96, 112, 256), Geometry(120, 80, 256), Geometry(64, 64, 256)], 64)
    assert grid.shape == (3, 64, 64)
    assert grid[0].sum() == 55 * 64 and grid[0, :55].all()  # 219 of 256 rows are image: 54.75 cells, rounded up
    assert grid[1].sum() == 64 * 43 and grid[1, :, :43].all()
    assert grid[2].all()


# -- uncertainty ------------------------------------------------------------------------------------------------------

def test_binary_entropy():
    values = binary_entropy(torch.tensor([0.5, 0.0, 1.0, 1e-9, 1 - 1e-9, 0.11]))
    assert values[0] == pytest.approx(1.0)
    assert values[1:5].max() < 1e-4
    assert values[5] == pytest.approx(0.4999, abs=1e-3)
    assert torch.isfinite(values).all()
    assert torch.equal(classifier_uncertainty(torch.tensor([0.5])), binary_entropy(torch.tensor([0.5])))


def test_segmentation_and_combined_uncertainty():
    crisp = torch.zeros(1, 8, 8)
    crisp[0, 2:5, 2:5] = 1.0
    unsure = torch.full((1, 8, 8), 0.5)
    empty = torch.zeros(1, 8, 8)
    scores = segmentation_uncertainty(torch.cat([crisp, unsure, empty]))
    assert scores[0] < 1e-4 and scores[1] == pytest.approx(1.0) and scores[2] == 0.0
    faint = torch.full((1, 8, 8), 0.05)  # below the 0.1 floor: not part of the mask's extent
    faint[0, 0, 0] = 0.5
    assert segmentation_uncertainty(faint)[0] == pytest.approx(1.0)
    p = torch.tensor([0.5, 1.0, 0.0])
    combined = combined_uncertainty(p, classifier_uncertainty(p), torch.tensor([1.0, 1.0, 1.0]))
    assert combined.tolist() == pytest.approx([0.75, 0.5, 0.0], abs=1e-4)  # (H(p) + p * seg) / 2
    assert ((combined >= 0) & (combined <= 1)).all()


def test_mc_dropout_probability_restores_the_mode():
    from model.heads import LocationClassifier

    torch.manual_seed(0)
    classifier = LocationClassifier(16, dropout=0.5).eval()
    features = torch.randn(3, 16, 4, 4)
    probability = mc_dropout_probability(classifier, features, samples=16)
    assert probability.shape == (3,) and ((probability >= 0) & (probability <= 1)).all()
    assert not classifier.training
    plain = classifier(features).softmax(1)[:, 1]
    assert not torch.allclose(probability, plain)  # dropout was active while sampling


# -- evaluation -------------------------------------------------------------------------------------------------------

def test_evaluate_summary_and_rows():
    backbone = micro_backbone()
    items = blob_items(backbone, 5, negatives=2, seed=3)
    items.append(replace(items[-1], id="unlabelled", mask=None))
    model = AdaSam(AdaSamConfig(backbone="micro", has_negatives=True), backbone)
    summary, rows = evaluate(model, items, prompt="auto")
    assert summary["n_images"] == 5 and summary["n_lesion"] == 3 and len(rows) == 5
    assert summary["prompt"] == "auto"
    for key in ("dice_lesion", "dice_all", "presence_auc", "hd95_lesion", "prompt_box_iou_lesion",
                "prompt_fallback_rate", "dice_lesion_ungated"):
        assert key in summary
    assert _in_unit_interval(summary["dice_all"]) and _in_unit_interval(summary["presence_auc"])
    # dice_all scores an empty truth 1 when the (gated) prediction is empty, else 0
    for row in rows:
        if not row["lesion"]:
            assert row["dice"] in (0.0, 1.0) and math.isnan(row["hd95"]) and math.isnan(row["box_iou"])
    assert summary["dice_all"] == pytest.approx(np.mean([r["dice"] for r in rows]))
    lesion = [r["dice"] for r in rows if r["lesion"]]
    assert summary["dice_lesion"] == pytest.approx(np.mean(lesion))
    with pytest.raises(ValueError, match="auto or oracle"):
        evaluate(model, items, prompt="cheat")
    with pytest.raises(ValueError, match="no image with a ground-truth mask"):
        evaluate(model, [replace(items[0], mask=None)])


def test_oracle_evaluation_of_the_real_weights_is_an_upper_bound():
    lite = lite_blob()
    item = Item("blob", lite["embedding"], lite["geometry"], lite["mask"], True)
    empty = Item("empty", lite["embedding"], lite["geometry"], np.zeros_like(lite["mask"]), False)
    model = AdaSam(AdaSamConfig(backbone="litemedsam", method="supervised", cascade=0), lite["backbone"])
    oracle, rows = evaluate(model, [item, empty], prompt="oracle")
    assert "upper bound" in oracle["prompt"] and "oracle" in oracle["prompt"]
    assert oracle["dice_lesion"] > 0.8
    assert oracle["prompt_box_iou_lesion"] == pytest.approx(1.0, abs=1e-4)  # its own box: the same edges
    assert math.isfinite(oracle["hd95_lesion"]) and oracle["hd95_lesion"] < 10
    auto, _ = evaluate(model, [item], prompt="auto")  # the whole image as the box: far worse than the oracle
    assert auto["prompt"] == "auto" and auto["dice_lesion"] < oracle["dice_lesion"]


# -- overlay ----------------------------------------------------------------------------------------------------------

def test_cam_overlay():
    lite = lite_blob()
    image, mask = lite["image"], lite["mask"]
    cam = np.zeros(mask.shape, np.float32)
    box = mask_box(mask)
    picture = cam_overlay(image, cam, mask, box)
    assert picture.shape == (*mask.shape, 3) and picture.dtype == np.uint8
    x0, y0, x1, y1 = (int(v) for v in box)
    assert picture[y0, (x0 + x1) // 2].tolist() == [255, 255, 0]  # the box, in yellow
    assert (picture[mask] == [0, 255, 0]).all(axis=1).any()  # the mask outline, in green
    plain = cam_overlay(image, None, None, None)
    assert np.array_equal(plain, display_image(image))
    rgb = cam_overlay(np.dstack([image] * 3), np.ones(mask.shape, np.float32), None, None)
    assert rgb.shape == plain.shape and not np.array_equal(rgb, plain)  # the heat map is blended in
