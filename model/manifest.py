"""The `has_lesion` column of a data folder's `manifest.csv`, read the same way by `adasam train` (model.dataset)
and `adasam import` (annotation.importers)."""
from __future__ import annotations

TRUE_VALUES = ("1", "true", "yes")
FALSE_VALUES = ("0", "false", "no")
UNKNOWN_VALUES = ("", "na", "none")


def parse_has_lesion(value: str | None) -> bool | None:
    """'1'/'true'/'yes' -> True, '0'/'false'/'no' -> False, empty/'na'/'none' -> None (any case, spaces ignored);
    anything else raises ValueError, so a typo is never read as "no lesion"."""
    text = (value or "").strip().lower()
    if text in UNKNOWN_VALUES:
        return None
    if text in TRUE_VALUES:
        return True
    if text in FALSE_VALUES:
        return False
    raise ValueError(f"has_lesion {text!r} is not 0 or 1")
