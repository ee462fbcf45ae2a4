"""The fixed validation set: chosen once and stored, so a project's Dice curve never jumps because it changed.

Images imported with split `val` and a mask are used when there are any. Otherwise, once VAL_MIN_LABELS pool images
have been labeled here, the first VAL_FRACTION of them (by time labeled) are frozen as validation and left out of
training from then on; until then rounds run without a validation score.
"""
from __future__ import annotations

import math

from annotation import Store
from annotation.records import DECIDED_HERE
from app.status import VALIDATION_IDS, VALIDATION_SOURCE

VAL_FRACTION = 0.1
VAL_MIN_LABELS = 30


def fix_validation_set(store: Store) -> list[int]:
    """The validation image ids, chosen and stored in the workspace the first time there is a way to choose them
    (and empty until then); every later call returns the same ids."""
    ids = store.get_setting(VALIDATION_IDS)
    if ids is not None:
        return list(ids)
    imported = [info.id for info, _ in store.labeled(split="val")]
    if imported:
        chosen, source = imported, f"{len(imported)} images imported with split 'val' and a mask"
    else:
        labeled = sorted(store.labeled(split="pool", origins=DECIDED_HERE), key=lambda pair: pair[1].created_at)
        if len(labeled) < VAL_MIN_LABELS:
            return []
        n = max(3, math.ceil(VAL_FRACTION * len(labeled)))
        chosen = [info.id for info, _ in labeled[:n]]
        source = f"the first {n} of {len(labeled)} images labeled here (not used for training)"
    store.set_setting(VALIDATION_IDS, chosen)
    store.set_setting(VALIDATION_SOURCE, source)
    return chosen


def validation_line(store: Store) -> str:
    """The dashboard's word on the validation set: how it was chosen and that it is fixed, or, before the first
    round fixes it, which images it will be (so a lead who imported masked val images sees they will be used)."""
    source = store.get_setting(VALIDATION_SOURCE)
    if source is not None:
        return f"{source} (fixed)"
    imported = len(store.labeled(split="val"))
    if imported:
        return f"not fixed yet: the first round fixes the {imported} images imported with split 'val' and a mask"
    return (f"not fixed yet: once {VAL_MIN_LABELS} pool images are labeled here, the first {VAL_FRACTION:.0%} of "
            f"them are kept out of training to validate on; until then rounds run without a validation score")
