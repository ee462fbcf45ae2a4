"""Plain data types the workspace hands out and takes in, so callers never see raw database rows."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SPLITS = ("pool", "val", "test")
ORIGINS = ("human", "accepted_prediction", "no_finding", "imported")
NOT_FROM_A_MODEL = ("human", "no_finding", "imported")  # drawn, marked or brought by people: what export ships by
# default (a prediction accepted unchanged is the model's mask)
DECIDED_HERE = ("human", "accepted_prediction", "no_finding")  # an annotator's decision in this workspace (imported
# masks excluded): what a validation set frozen from early labels is drawn from


@dataclass(frozen=True, kw_only=True)
class ImageRecord:
    """One image to register: its stored file (already written) and where it came from."""

    sha256: str
    file: str
    name: str
    original_path: str
    width: int
    height: int
    channels: int = 1
    bit_depth: int = 8
    dtype: str = "uint8"
    modality: str = "PNG"
    split: str = "pool"
    has_lesion: bool | None = None
    volume_id: int | None = None
    slice_index: int | None = None
    frame_index: int | None = None
    window_center: float | None = None
    window_width: float | None = None
    invert: bool = False


@dataclass(frozen=True, kw_only=True)
class ImageInfo(ImageRecord):
    """A registered image; `state` is unlabeled, masked or no_finding (from its latest live mask)."""

    id: int
    state: str
    imported_at: str


@dataclass(frozen=True)
class MaskInfo:
    """One version of an image's mask; `file` is None for a no-finding mark (an empty mask)."""

    id: int
    image_id: int
    version: int
    parent_version: int | None
    origin: str
    annotator: str
    model_version: str | None
    file: str | None
    created_at: str
    undone_at: str | None
    conflict_with: int | None = None  # the version saved meanwhile by someone else, which this save did not see


@dataclass(frozen=True)
class Task:
    """What `next_task` hands an annotator: the image, why it was chosen, and until when it is theirs."""

    image: ImageInfo
    uncertainty: float | None
    probability: float | None
    lease_expires_at: float
    skipped_before: bool


@dataclass
class PredictionRecord:
    """One model output for one image, as the trainer records it."""

    image_id: int
    uncertainty: float  # the model's combined uncertainty (model.uncertainty)
    probability: float | None = None
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    classifier_uncertainty: float | None = None  # its two parts, which active-learning strategies rank by
    segmentation_uncertainty: float | None = None


@dataclass(frozen=True)
class ModelInfo:
    version: str
    created_at: str
    checkpoint_path: str
    metrics: dict[str, Any]
    round_id: int | None
    published: bool = True  # False: trained, but validation showed it worse than the model then serving


@dataclass(frozen=True)
class RoundInfo:
    id: int
    started_at: str
    ended_at: str | None
    labels_used: int
    val_dice: float | None
    status: str
    error: str | None
    model_version: str | None
    note: str | None = None  # e.g. why its model was not published
    owner: str = "trainer"  # "trainer": the workspace's own; else the name of a remote trainer's token
    alive_at: float | None = None  # unix time a remote owner last reported progress


@dataclass(frozen=True)
class WorkspaceCounts:
    """What `adasam status` prints."""

    images: int
    masked: int
    no_finding: int
    tagged: int
    unlabeled: int
    leased: int
    latest_model: ModelInfo | None = None
    latest_round: RoundInfo | None = None
    by_split: dict[str, int] = field(default_factory=dict)


def from_row(cls: type, row: Any, **overrides: Any) -> Any:
    """Build a record from a sqlite3.Row, taking only the fields the record declares."""
    keys = set(row.keys())
    values = {f.name: row[f.name] for f in dataclasses.fields(cls) if f.name in keys}
    values.update(overrides)
    return cls(**values)
