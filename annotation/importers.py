"""`adasam import`: bring folders and files of medical images (with optional masks and a manifest) into a workspace.

Layout understood (the project's dataset layout): `<root>/images/<id>.<ext>`, `<root>/masks/<id>.<ext>` and
`<root>/manifest.csv` (columns id, split, has_lesion; others ignored). Any other folder of images works too.
Each file is decoded, its pixel files are stored completely, and only then are its rows added in one transaction,
so an interrupted import leaves whole images or none and can simply be run again. Bad files are skipped and listed,
and so are images over the size limit (checked from the header, before decoding) and hidden files named like images.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from annotation.decode import (KINDS, MAX_IMAGE_PIXELS, DecodeError, Decoded, VolumeInfo, decode, decode_mask,
                               first_line, kind_of, stem, suffix)
from annotation.dicom_series import SeriesSlice, plan_series
from annotation.records import SPLITS, ImageRecord
from annotation.store import Store
from model.manifest import parse_has_lesion, row_for, rows_by_id

MANIFEST = "manifest.csv"
HIDDEN = "hidden file (name starts with '.'): not imported; rename it to import it"


@dataclass
class ImportSummary:
    """What an import did; `skipped` lists (path, reason) for every file that was not taken."""

    added: int = 0
    duplicates: int = 0
    masks_added: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # imported, but not as the user may expect
    series: int = 0  # DICOM series imported as volumes

    def skip(self, path: Path | str, reason: str) -> None:
        self.skipped.append((str(path), reason))


def import_sources(store: Store, sources: Iterable[str | os.PathLike[str]], *, with_masks: bool = True,
                   axis: int = -1, progress: bool = True, annotator: str = "import",
                   max_pixels: int | None = MAX_IMAGE_PIXELS) -> ImportSummary:
    """Import every image under `sources` (folders or files); never raises for bad input, reports it instead.

    An image, frame or slice (or its mask) over `max_pixels` (None: no limit) is skipped without being decoded."""
    summary = ImportSummary()
    store.collect_garbage()  # pixel files orphaned by an earlier interrupted run
    files: list[Path] = []
    walked: set[Path] = set()  # folders read whole: only their masks/ can hold masks with no image
    for source in sources:
        files.extend(_collect(Path(source), summary, walked))
    layout = _Layout()
    series, notes = plan_series([path for path in files if _is_dicom_file(path)])
    summary.notes += [(str(path), note) for path, note in notes]
    summary.series = len({placement.volume_path for placement in series.values()})
    for path in tqdm(files, desc="import", unit="file", disable=not progress):
        try:
            _import_file(store, path, layout, with_masks, axis, max_pixels, annotator, summary, series.get(path))
        except Exception as exc:  # one bad file must never stop the import
            summary.skip(path, str(exc) if isinstance(exc, DecodeError) else f"{type(exc).__name__}: {first_line(exc)}")
    for mask in layout.escaped:
        summary.skip(mask, f"path escapes the masks folder (links to {mask.resolve()})")
    for mask, reason in layout.ambiguous.items():
        summary.skip(mask, reason)
    for manifest, ids in layout.unmatched_rows(walked):
        shown = ", ".join(repr(i) for i in ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        summary.notes.append((str(manifest), f"{len(ids)} row(s) match no imported image ({shown}): their split and "
                              "has_lesion were not applied; ids are file names, with or without the extension"))
    if with_masks:
        for mask in layout.unused_masks(walked):
            summary.skip(mask, HIDDEN if mask.name.startswith(".") else "mask has no image with the same name")
    return summary


def _collect(source: Path, summary: ImportSummary, walked: set[Path]) -> list[Path]:
    """Files to import under `source`, refusing links that lead outside it; masks/ and manifest.csv are not images."""
    if not source.exists():
        summary.skip(source, "no such file or directory")
        return []
    if source.is_file():
        return [source]
    root = source.resolve()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(source):
        here = Path(dirpath)
        walked.add(here.absolute())
        if "images" in dirnames and "masks" in dirnames:
            dirnames.remove("masks")  # read as the masks of images/, not as images
        for name in sorted(dirnames):
            if (here / name).is_symlink() and not _inside(here / name, root):
                summary.skip(here / name, f"path escapes the source folder (links to {(here / name).resolve()})")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = here / name
            if name.startswith(".") or name == MANIFEST:
                if _hidden_image(name):
                    summary.skip(path, HIDDEN)
                continue
            if not _inside(path, root):
                summary.skip(path, f"path escapes the source folder (links to {path.resolve()})")
                continue
            found.append(path)
    return found


def _is_dicom_file(path: Path) -> bool:
    try:
        return kind_of(path) == "DICOM"
    except (DecodeError, OSError):
        return False


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def _hidden_image(name: str) -> bool:
    """A dot-file named like an image ('..png', '.scan.dcm') is listed as skipped: silence would hide a lost image.
    Other dot-files (.DS_Store) and dot-folders (.git) are ignored without a word."""
    return name.startswith(".") and name.lower().endswith(tuple(KINDS))


def _import_file(store: Store, path: Path, layout: "_Layout", with_masks: bool, axis: int, max_pixels: int | None,
                 annotator: str, summary: ImportSummary, in_series: SeriesSlice | None = None) -> None:
    mask_path = layout.mask_for(path) if with_masks else None  # first: a skipped image's mask is not an orphan
    split, has_lesion = layout.manifest_values(path)
    decoded = decode(path, axis, max_pixels)
    if decoded.non_finite:
        summary.notes.append((str(path), f"{decoded.non_finite} NaN or infinite value(s) set to the lowest finite "
                              "value"))
    positions = list(range(len(decoded.frames)))  # frame or slice numbers within the file
    absolute = as_text(str(path.absolute()))
    volume_path = absolute
    if in_series is not None:  # one slice of a DICOM series: the series is the volume
        decoded.position_kind = "slice"
        decoded.volume = VolumeInfo(2, in_series.shape, in_series.affine)
        positions, volume_path = [in_series.position], as_text(in_series.volume_path)
    masks = None
    if mask_path is not None:
        try:
            masks = _matching_masks(mask_path, decoded, axis, max_pixels)
        except Exception as exc:
            summary.skip(mask_path, f"{first_line(exc)}; image imported without its mask")

    # Files first (complete, content-addressed), rows after: a row never points at a missing or partial file.
    records, mask_files = [], []
    for index, (position, pixels) in enumerate(zip(positions, decoded.frames)):
        sha, relpath = store.files.put(pixels, "images")
        records.append(_record(decoded, pixels, position, sha, relpath, as_text(stem(path)), absolute, split,
                               has_lesion))
        mask_files.append(None if masks is None else store.files.put_mask(masks[index]))

    added = masks_added = 0
    kept: list[tuple[int, int]] = []  # (image id, index) of masks not imported: the image already had one
    with store.transaction():
        volume_id = None
        if decoded.volume is not None:
            volume = decoded.volume
            volume_id = store.register_volume(volume_path, volume.axis, volume.shape, volume.affine)
            records = [dataclasses.replace(r, volume_id=volume_id) for r in records]
        results = store.register_images(records, who=annotator)
        for index, (position, (image_id, new), mask_file) in enumerate(zip(positions, results, mask_files)):
            store.add_source(image_id, _source_key(absolute, decoded, position), absolute, volume_id,
                             position if decoded.position_kind else None)
            added += new
            if mask_file is not None:
                if store.add_imported_mask(image_id, mask_file, annotator):
                    masks_added += 1
                else:
                    kept.append((image_id, index))
    summary.added += added
    summary.duplicates += len(records) - added
    summary.masks_added += masks_added
    _note_conflicts(store, path, mask_path, records, results, masks, kept, summary)


def _note_conflicts(store: Store, path: Path, mask_path: Path | None, records: list[ImageRecord],
                    results: list[tuple[int, bool]], masks: list[np.ndarray] | None, kept: list[tuple[int, int]],
                    summary: ImportSummary) -> None:
    """Say where the files disagree with themselves or with the workspace. A manifest's has_lesion against its
    mask. A re-import never overwrites what the workspace holds (an annotator may have corrected it since), so: a
    mask other than the image's current one, a split other than its own."""
    flag = records[0].has_lesion
    if masks is not None and flag is not None and len(masks) == 1 and bool(masks[0].any()) != flag:
        summary.notes.append((str(path), f"the manifest says has_lesion {int(flag)} but its mask "
                                         f"{'is empty' if flag else 'is not'}; both were imported as they are"))
    differ = [image_id for image_id, index in kept
              if (current := store.load_mask(image_id)) is None or not np.array_equal(current, masks[index])]
    if differ:
        summary.notes.append((str(mask_path), f"differs from the mask the workspace holds for {len(differ)} of its "
                                              f"images, which was kept (edit it in the app to change it)"))
    moved = {split for (image_id, new), record in zip(results, records)
             if not new and (split := store.image(image_id).split) != record.split}
    if moved:
        summary.notes.append((str(path), f"already in the workspace in split {', '.join(sorted(moved))}, which was "
                                         f"kept; the manifest's split {records[0].split} was not applied"))


def _record(decoded: Decoded, pixels: np.ndarray, index: int, sha: str, relpath: str, name: str, path: str,
            split: str, has_lesion: bool | None) -> ImageRecord:
    if decoded.position_kind == "frame":
        name, frame, slice_index = f"{name}_f{index:04d}", index, None
    elif decoded.position_kind == "slice":
        name, frame, slice_index = f"{name}_s{index:04d}", None, index
    else:
        frame = slice_index = None
    window = decoded.window if pixels.dtype != np.uint8 or decoded.modality.startswith("DICOM") else None
    return ImageRecord(
        sha256=sha, file=relpath, name=name, original_path=path,
        width=int(pixels.shape[1]), height=int(pixels.shape[0]),
        channels=1 if pixels.ndim == 2 else int(pixels.shape[2]),
        bit_depth=pixels.dtype.itemsize * 8, dtype=str(pixels.dtype), modality=decoded.modality,
        split=split, has_lesion=has_lesion, slice_index=slice_index, frame_index=frame,
        window_center=None if window is None else window[0], window_width=None if window is None else window[1],
        invert=decoded.invert,
    )


def _source_key(path: str, decoded: Decoded, index: int) -> str:
    if decoded.position_kind == "slice" and decoded.volume is not None:
        return f"{path}#axis{decoded.volume.axis}:slice{index}"
    if decoded.position_kind == "frame":
        return f"{path}#frame{index}"
    return path


def _matching_masks(mask_path: Path, decoded: Decoded, axis: int, max_pixels: int | None) -> list[np.ndarray]:
    """The mask file's frames, checked against the image's: same count, same size (and for NIfTI, the same
    affine)."""
    mask = decode_mask(mask_path, axis, max_pixels)
    masks = mask.frames
    if mask.modality == decoded.modality == "NIfTI" and not np.allclose(
            mask.volume.affine, decoded.volume.affine, atol=1e-3):  # same array, other orientation: mirrored slices
        raise DecodeError("the mask's voxel-to-world affine differs from its image's (another orientation or "
                          "origin): resample the mask onto the image's grid first")
    if len(masks) != len(decoded.frames):
        raise DecodeError(f"mask has {len(masks)} frames/slices but its image has {len(decoded.frames)}")
    for mask, image in zip(masks, decoded.frames):
        if mask.shape != image.shape[:2]:
            raise DecodeError(f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size "
                              f"{image.shape[1]}x{image.shape[0]}")
    return masks


class _Layout:
    """Finds each image's manifest row and mask file, reading each manifest and masks/ folder once."""

    def __init__(self) -> None:
        self._manifests: dict[Path, dict[str, dict[str, str]] | DecodeError] = {}
        self._mask_dirs: dict[Path, dict[str, list[Path]]] = {}
        self._images_of: dict[Path, Path] = {}  # masks/ folder -> the images/ folder it holds the masks of
        self._image_names: dict[Path, dict[str, list[str]]] = {}  # images/ folder -> stem -> file names
        self._used: set[Path] = set()
        self._matched: dict[Path, set[str]] = {}  # manifest -> the ids of its rows that an image matched
        self._served: dict[Path, set[Path]] = {}  # manifest -> the folders of the images looked up in it
        self.escaped: list[Path] = []
        self.ambiguous: dict[Path, str] = {}  # mask -> why no image was given it

    def manifest_values(self, image: Path) -> tuple[str, bool | None]:
        """(split, has_lesion) for an image: from the manifest beside it or beside its images/ folder."""
        candidates = [image.parent / MANIFEST]
        if image.parent.name == "images":
            candidates.append(image.parent.parent / MANIFEST)
        for candidate in candidates:
            if candidate.is_file():
                found = row_for(self._manifest(candidate), stem(image), image.name)
                self._served.setdefault(candidate, set()).add(image.parent.absolute())
                if found is None:
                    return "pool", None
                self._matched.setdefault(candidate, set()).add(found[0])
                return _split(found[1], candidate), _flag(found[1], candidate)
        return "pool", None

    def unmatched_rows(self, walked: set[Path]) -> list[tuple[Path, list[str]]]:
        """(manifest, ids) for rows no image matched, where the manifest's images were imported whole: a row meant
        to put an image in `test` that silently matches nothing would leave that image in the pool."""
        out = []
        for manifest, folders in self._served.items():
            table = self._manifests[manifest]  # read: a manifest that failed to read served no image
            if folders & walked:
                ids = [key for key in table if key not in self._matched.get(manifest, set())]
                if ids:
                    out.append((manifest, ids))
        return out

    def _manifest(self, path: Path) -> dict[str, dict[str, str]]:
        if path not in self._manifests:
            try:
                with open(path, newline="", encoding="utf-8-sig") as handle:
                    reader = csv.DictReader(handle)
                    if "id" not in (reader.fieldnames or []):
                        raise DecodeError(f"{path} has no 'id' column")
                    self._manifests[path] = rows_by_id(reader)
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                self._manifests[path] = DecodeError(f"cannot read {path}: {first_line(exc)}")
            except ValueError as exc:
                self._manifests[path] = DecodeError(f"{path}: {exc}")
            except DecodeError as exc:
                self._manifests[path] = exc
        table = self._manifests[path]
        if isinstance(table, DecodeError):
            raise table  # the image is skipped: its split (maybe 'test') cannot be known
        return table

    def mask_for(self, image: Path) -> Path | None:
        """`masks/<same subfolders>/<same stem>.*` beside the images/ folder an image is in, at any depth below it
        (`images/p1/a.png` has `masks/p1/a.png`); None where the pairing is ambiguous (two masks, or two images,
        share the stem: `a.png` and `a.tif`), the masks then listed in `ambiguous`."""
        images_dir = next((p for p in image.parents if p.name == "images" and (p.parent / "masks").is_dir()), None)
        if images_dir is None:
            return None
        mask_dir = images_dir.parent / "masks" / image.parent.relative_to(images_dir)
        self._images_of[mask_dir] = image.parent
        if mask_dir not in self._mask_dirs:
            index: dict[str, list[Path]] = {}
            if mask_dir.is_dir():
                real = mask_dir.resolve()
                for path in sorted(mask_dir.iterdir()):
                    ignored = path.name.startswith(".") and not _hidden_image(path.name)  # hidden images get listed
                    if ignored or not (path.is_file() or path.is_symlink()) or not _could_be_image(path):
                        continue  # a sidecar (a.json beside a.nii.gz) is no second mask of a
                    if _inside(path, real):
                        index.setdefault(stem(path), []).append(path)
                    else:
                        self.escaped.append(path)
            self._mask_dirs[mask_dir] = index
        masks = self._mask_dirs[mask_dir].get(stem(image), [])
        self._used.update(masks)
        if image.parent not in self._image_names:
            self._image_names[image.parent] = {}
            for path in sorted(image.parent.iterdir()):
                if not path.name.startswith(".") and path.is_file() and _could_be_image(path):
                    self._image_names[image.parent].setdefault(stem(path), []).append(path.name)
        images = self._image_names[image.parent].get(stem(image), [])
        if len(masks) > 1 or (masks and len(images) > 1):
            reason = (f"masks {', '.join(m.name for m in masks)} share a name" if len(masks) > 1 else
                      f"images {', '.join(sorted(images))} share its name")
            self.ambiguous.update({mask: f"{reason}: which mask is whose cannot be known (rename them)"
                                   for mask in masks})
            return None
        return masks[0] if masks else None

    def unused_masks(self, walked: set[Path]) -> list[Path]:
        """Masks matching no image, in masks/ folders whose images/ folder was imported whole."""
        return [path for mask_dir, index in self._mask_dirs.items() if self._images_of[mask_dir].absolute() in walked
                for paths in index.values() for path in paths if path not in self._used]


def _could_be_image(path: Path) -> bool:
    """An image's extension, or none (DICOM files often have none): what can pair with a mask by stem."""
    return suffix(path) in KINDS or not path.suffix


def as_text(name: str) -> str:
    """A file name as the workspace stores it: bytes that are not UTF-8 (`caf\\xe9.png` from a Latin-1 disk) written
    as backslash escapes, since SQLite text must be UTF-8 (the image was skipped with a raw UnicodeEncodeError)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _split(row: dict[str, str], manifest: Path) -> str:
    split = (row.get("split") or "pool").strip().lower()
    if split not in SPLITS:
        raise DecodeError(f"{manifest.name}: split {split!r} is not one of {', '.join(SPLITS)}")
    return split


def _flag(row: dict[str, str], manifest: Path) -> bool | None:
    try:
        return parse_has_lesion(row.get("has_lesion"))
    except ValueError as exc:
        raise DecodeError(f"{manifest.name}: {exc}") from None
