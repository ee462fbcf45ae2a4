"""A data folder's `manifest.csv`, read the same way by `adasam train` (model.dataset) and `adasam import`
(annotation.importers): its rows by id, and its `has_lesion` column."""
from __future__ import annotations

from collections.abc import Iterable

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


def rows_by_id(rows: Iterable[dict[str, str]]) -> dict[str, dict[str, str]]:
    """id -> row; an id on two rows raises ValueError (which row's split would hold? a pool image could land in
    test)."""
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        if row["id"] in table:
            raise ValueError(f"id {row['id']!r} is on two rows")
        table[row["id"]] = row
    return table


def row_for(table: dict[str, dict[str, str]], stem: str, name: str) -> tuple[str, dict[str, str]] | None:
    """(id, row) of the image whose file is `name` (`stem` without its extension): ids are file names with or
    without the extension."""
    for key in (stem, name):
        if key in table:
            return key, table[key]
    return None
