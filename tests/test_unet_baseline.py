"""The U-Net reference of benchmarks/unet_baseline.py (its training is model.image_view's): trained until val stops
improving (the rule every method has) and on augmented copies whose masks stay on their images."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from unet_baseline import UNetConfig, train_unet  # noqa: E402

from model.image_view import augmentation, augmented, stalled  # noqa: E402 (the U-Net's training lives there)
from model.testing import write_blob_dataset  # noqa: E402


def test_stopping_rule_is_the_trainers():
    history = [{"step": 1}, {"step": 2}, {"step": 3}, {"step": 4}]
    assert not stalled(history, since=2, patience=3)  # two evaluations since the best
    assert stalled(history, since=1, patience=3)
    assert not stalled(history, since=1, patience=0)  # 0: run every step of the cap


def test_augmented_masks_stay_on_their_images():
    images = torch.zeros(6, 1, 64, 64)
    images[:, :, 18:42, 14:30] = 0.8  # an asymmetric bright block, and its mask
    masks = (images > 0).float()
    transform = augmentation(seed=3, size=64)
    out_images, out_masks = augmented(transform, images, masks)
    assert type(out_images) is torch.Tensor and out_images.shape == images.shape
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    moved = 0
    for image, mask, original in zip(out_images, out_masks, masks):
        bright = image > 0.3
        overlap = (bright & (mask > 0)).sum() / (bright | (mask > 0)).sum()
        assert overlap > 0.9  # the block and its mask moved together
        moved += not torch.equal(mask, original)
    assert moved >= 3  # most draws change the image (affine with probability 0.8, flip 0.5)
    again, _ = augmented(augmentation(seed=3, size=64), images, masks)
    assert torch.equal(again, out_images)  # seeded


def test_augmentation_shifts_both_ways():
    """A block at the centre: rotation, scaling about the centre and the flip leave its centroid where it is, so
    only the shift moves it, by up to 10% of the side along each axis (MONAI applies a single range to the first axis
    alone: this catches it)."""
    images = torch.zeros(40, 1, 64, 64)
    images[:, :, 24:40, 26:38] = 1.0
    _, masks = augmented(augmentation(seed=0, size=64), images, images.clone())
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    weight = masks[:, 0].sum((1, 2))
    row_centroid, col_centroid = ((masks[:, 0] * g).sum((1, 2)) / weight for g in (rows, cols))
    assert row_centroid.std() > 1.5 and col_centroid.std() > 1.5  # uniform +-6.4 px: sd ~3.7 when drawn
    assert (row_centroid - 31.5).abs().max() < 8 and (col_centroid - 31.5).abs().max() < 8


def test_unet_trains_until_val_stops_improving(tmp_path, monkeypatch):
    import unet_baseline

    val_scores = iter([0.5, 0.7, 0.7, 0.6, 0.65, 0.9])
    # val figures as scripted; the final test figure as measured
    monkeypatch.setattr(unet_baseline, "lesion_dice", lambda net, images, masks: next(val_scores))
    data = write_blob_dataset(tmp_path / "data", n=18, negatives=4)
    config = UNetConfig(size=32, channels=(4, 8, 16), steps=60, batch=4, eval_every=2, patience=2, min_steps=0)
    result = train_unet(str(data), 1.0, 0, tmp_path / "run", config)
    assert [r["score"] for r in result["val_history"]] == [0.5, 0.7, 0.7, 0.6, 0.65]  # 0.9 never reached
    assert result["best_step"] == 6  # the later of the two 0.7s
    assert result["stopped_at"] == 10  # two evaluations without a better score after step 6
    val_scores = iter([0.5, 0.4, 0.3, 0.9, 0.8, 0.7])  # without a floor: stopped at step 6, best 0.5
    floored = train_unet(str(data), 1.0, 0, tmp_path / "floored", replace(config, min_steps=7))
    assert floored["best_step"] == 8 and floored["stopped_at"] == 12  # patience counted after step 7 only
    assert (tmp_path / "run" / "eval_auto.json").is_file() and 0 <= result["dice_all"] <= 1


@pytest.mark.parametrize("augment", [True, False])
def test_unet_runs_with_and_without_augmentation(tmp_path, augment):
    data = write_blob_dataset(tmp_path / "data", n=12, negatives=3)
    config = UNetConfig(size=32, channels=(4, 8, 16), steps=4, batch=4, eval_every=2, augment=augment)
    result = train_unet(str(data), 1.0, 0, tmp_path / "run", config)
    assert result["unet"]["augment"] is augment and result["stopped_at"] == 4


def test_an_averaged_unet_is_a_run_of_its_own_and_runs_recorded_before_stay_done(tmp_path, monkeypatch):
    import unet_baseline

    trained_with = []
    real_fit = unet_baseline.fit

    def fit(net, images, targets, score, training, seed):
        trained_with.append(training.ema_decay)
        return real_fit(net, images, targets, score, training, seed)

    monkeypatch.setattr(unet_baseline, "fit", fit)
    data = write_blob_dataset(tmp_path / "data", n=12, negatives=3)
    config = UNetConfig(size=32, channels=(4, 8, 16), steps=4, batch=4, eval_every=2)
    raw = train_unet(str(data), 1.0, 0, tmp_path / "run", config)
    assert "ema_decay" not in raw["unet"] and trained_with == [0.0]  # recorded as before the field existed
    assert train_unet(str(data), 1.0, 0, tmp_path / "run", config)["train_seconds"] == raw["train_seconds"]
    assert trained_with == [0.0]  # done: read back, not trained again
    averaged = train_unet(str(data), 1.0, 0, tmp_path / "run", replace(config, ema_decay=0.9))
    assert averaged["unet"]["ema_decay"] == 0.9 and trained_with == [0.0, 0.9]  # other settings: trained again
