"""DICOM series as volumes: single-frame DICOM files grouped by SeriesInstanceUID and ordered along the slice normal
by ImagePositionPatient (read with pydicom, headers only).

Each file stays one image of the workspace; a series becomes one volume, the same notion a NIfTI file's slices have
(`Store.register_volume`): axis 2, shape (columns, rows, slices) and the affine from voxel (column, row, slice) to
RAS millimetres, so the NIfTI export puts the masks back into a volume that overlays the series in any viewer. A
series whose files disagree (size, orientation, spacing, a missing position, two slices at one place, uneven gaps)
is not a volume: each of its files is imported as a lone image, as before, with a note saying why.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from annotation.decode import first_line, is_dicom

TOLERANCE = 1e-3  # orientation cosines, spacings and slice gaps (mm) that differ by less are equal


@dataclass(frozen=True)
class SeriesSlice:
    """Where one file lies in its series' volume."""

    volume_path: str  # the volume's name in the workspace: <folder of its first file>/<SeriesInstanceUID>.series
    position: int  # index along the slice normal, 0 first
    shape: tuple[int, int, int]  # (columns, rows, slices): x, y, z as NIfTI sees them
    affine: list[list[float]]  # voxel (column, row, slice) -> RAS millimetres


def plan_series(paths: list[Path]) -> tuple[dict[Path, SeriesSlice], list[tuple[Path, str]]]:
    """-> (slice placement of every file that belongs to a series volume, a note for every DICOM file of a series that
    cannot be one). Files that are not single-frame DICOM images, and series of one file, are left out of both."""
    import pydicom

    series: dict[str, list[tuple[Path, object]]] = defaultdict(list)
    for path in paths:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=not is_dicom(path))
        except Exception:  # noqa: BLE001 - not DICOM, or unreadable: its own import says so
            continue
        uid = header.get("SeriesInstanceUID")
        if uid and int(header.get("NumberOfFrames", 1) or 1) == 1 and "Rows" in header:
            series[str(uid)].append((path, header))
    placements: dict[Path, SeriesSlice] = {}
    notes: list[tuple[Path, str]] = []
    for uid, members in series.items():
        if len(members) < 2:
            continue
        try:
            placements.update(_place(uid, members))
        except ValueError as exc:
            notes += [(path, f"series {uid}: {exc}; imported as a lone image") for path, _ in members]
    return placements, notes


def _place(uid: str, members: list[tuple[Path, object]]) -> dict[Path, SeriesSlice]:
    """Order one series' files and compute its volume geometry; ValueError (one line) when they do not form one."""
    try:
        geometry = [(int(h.Rows), int(h.Columns), np.array(h.ImageOrientationPatient, float),
                     np.array(h.PixelSpacing, float), np.array(h.ImagePositionPatient, float)) for _, h in members]
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"a file lacks its geometry ({first_line(exc)})") from None
    rows, columns, orientation, spacing, _ = geometry[0]
    for r, c, o, s, _ in geometry[1:]:
        if (r, c) != (rows, columns):
            raise ValueError("its files differ in size")
        if not (np.allclose(o, orientation, atol=TOLERANCE) and np.allclose(s, spacing, atol=TOLERANCE)):
            raise ValueError("its files differ in orientation or pixel spacing")
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    normal = np.cross(row_cosine, column_cosine)
    order = sorted(range(len(members)), key=lambda k: float(geometry[k][4] @ normal))
    along = np.array([geometry[k][4] @ normal for k in order])
    gaps = np.diff(along)
    if gaps.min() < TOLERANCE:
        raise ValueError("two of its files lie at the same position")
    if gaps.max() - gaps.min() > max(TOLERANCE, 0.01 * gaps.mean()):
        raise ValueError(f"its slice gaps are uneven ({gaps.min():.3g}-{gaps.max():.3g} mm: a slice missing?)")
    positions = np.array([geometry[k][4] for k in order])
    step = (positions[-1] - positions[0]) / (len(order) - 1)  # along the normal, or slanted (a tilted gantry)
    if not np.allclose(positions, positions[0] + np.outer(np.arange(len(order)), step),
                       atol=max(TOLERANCE, 0.01 * float(np.linalg.norm(step)))):
        raise ValueError("its slices do not lie on one line")
    lps = np.eye(4)
    lps[:3, 0] = row_cosine * spacing[1]  # x: along a row, one column to the next
    lps[:3, 1] = column_cosine * spacing[0]  # y: down a column, one row to the next
    lps[:3, 2] = step  # one slice to the next: the normal times the gap unless the gantry was tilted
    lps[:3, 3] = geometry[order[0]][4]
    affine = (np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps).tolist()  # DICOM's LPS to NIfTI's RAS
    volume_path = str(members[order[0]][0].absolute().parent / f"{uid}.series")
    shape = (columns, rows, len(members))
    return {members[k][0]: SeriesSlice(volume_path, position, shape, affine) for position, k in enumerate(order)}
