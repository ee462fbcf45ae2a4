"""`adasam export`: the latest mask of every labeled image as PNG, COCO RLE, NIfTI, an nnU-Net v2 raw dataset or DICOM
SEG, with manifest and provenance.

What is exported: images whose latest mask a person made (drawn, imported with the data, or marked no-finding,
which is exported as an empty mask); with `include_predictions`, also those whose latest mask is a model
prediction a person accepted as is. NIfTI: slices that came from a volume are put back into a mask volume of the
source's shape with the source's affine (unlabeled slices stay 0); other images each get a one-slice .nii.gz
(array = mask transposed to x, y, 1; identity affine). nnU-Net: see `_write_nnunet`; DICOM SEG: `_write_dicom_seg`
(images not imported from DICOM are left out and listed in the summary).

The export is written to a hidden folder beside `out`, read back and checked against the workspace, and only then
renamed to `out`: `out` either does not exist or is complete.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from annotation.decode import first_line, stem
from annotation.records import NOT_FROM_A_MODEL, ImageInfo, MaskInfo
from annotation.store import LABEL_NAME, Store, WorkspaceError, utc_now

FORMATS = ("png", "coco", "nifti", "nnunet", "dicom-seg")
MANIFEST_COLUMNS = ["name", "image_id", "sha256", "original_path", "width", "height", "split", "has_lesion",
                    "mask_file", "empty", "origin", "annotator", "created_at", "model_version", "mask_version",
                    "volume", "slice_index", "frame_index"]


@dataclass
class ExportSummary:
    out: Path
    format: str
    images: int
    empty: int
    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image name, why), e.g. no DICOM source for SEG


@dataclass
class _Item:
    name: str
    image: ImageInfo
    mask: MaskInfo
    empty: bool = False  # set by the writer
    source: Any = None  # the source file's DICOM header (DICOM SEG only)
    refused: str | None = None  # why the writer could not write it (DICOM SEG only): listed as skipped

    def pixels(self, store: Store) -> np.ndarray:
        """The boolean mask (all False for no-finding), read when needed so big exports stay small in memory."""
        mask = store.read_mask(self.image, self.mask)
        self.empty = not mask.any()
        return mask


def export_workspace(store: Store, out: str | os.PathLike[str], fmt: str, *, include_predictions: bool = False,
                     who: str = "export") -> ExportSummary:
    """Write the export to `out` (which must not exist, or be an empty folder) and return what it holds."""
    if fmt not in FORMATS:
        raise WorkspaceError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WorkspaceError(f"{out} already exists and is not an empty folder")
    origins = NOT_FROM_A_MODEL + (("accepted_prediction",) if include_predictions else ())
    labeled = store.labeled(origins=origins)
    if not labeled:
        hint = "" if include_predictions or not store.labeled(origins=("accepted_prediction",)) else \
            " (only accepted predictions; add --include-predictions)"
        raise WorkspaceError(f"nothing to export: no image in {store.root} has a mask or a no-finding mark{hint}")

    items = [_Item(name, image, mask) for name, (image, mask) in zip(_unique_names(labeled), labeled)]
    skipped: list[tuple[str, str]] = []
    if fmt == "dicom-seg":
        items, skipped = _with_dicom_sources(items)
        if not items:
            raise WorkspaceError(f"nothing to export as DICOM SEG: no labeled image in {store.root} was imported "
                                 f"from a readable single-frame DICOM file ({skipped[0][1]}, for one)")
    out.parent.mkdir(parents=True, exist_ok=True)  # only once there is something to write
    _remove_stale_temporaries(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        writer = {"png": _write_png, "coco": _write_coco, "nifti": _write_nifti, "nnunet": _write_nnunet,
                  "dicom-seg": _write_dicom_seg}[fmt]
        mask_files = writer(store, tmp, items)
        skipped += [(item.name, item.refused) for item in items if item.refused]
        items = [item for item in items if not item.refused]
        if not items:
            raise WorkspaceError(f"nothing could be exported as {fmt} ({skipped[0][1]}, for one)")
        _write_manifest(store, tmp, items, mask_files)
        _write_provenance(store, tmp, items, fmt, include_predictions)
        _validate(store, tmp, fmt, items, mask_files)
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    store.log_event(who, "export", {"format": fmt, "out": str(out), "images": len(items)})
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return ExportSummary(out=out, format=fmt, images=len(items), empty=sum(i.empty for i in items),
                         files=files, skipped=skipped)


def export_zip(store: Store, folder: str | os.PathLike[str], fmt: str, *, include_predictions: bool = False,
               who: str = "export") -> tuple[Path, ExportSummary]:
    """The export as one zip in `folder` (for a download), named after the workspace, format and time; checked like
    `export_workspace` before it is zipped. The unzipped copy is removed."""
    folder = Path(folder)
    name = f"{store.root.resolve().name}-{fmt}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = export_workspace(store, folder / name, fmt, include_predictions=include_predictions, who=who)
    try:
        archive = shutil.make_archive(str(folder / name), "zip", root_dir=folder, base_dir=name)
    finally:
        shutil.rmtree(folder / name)
    return Path(archive), summary


def _unique_names(labeled: list[tuple[ImageInfo, MaskInfo]]) -> list[str]:
    """Image names as file names, unique even where case is ignored (macOS, Windows): a name two images share gets
    the image id appended, and again while that is taken too (images 'a', 'a' and 'a_1' gave 'a_1' twice)."""
    counts = Counter(image.name.casefold() for image, _ in labeled)
    taken = {name for name, n in counts.items() if n == 1}
    names = []
    for image, _ in labeled:
        name = image.name
        if counts[name.casefold()] > 1:
            name = f"{name}_{image.id}"
            while name.casefold() in taken:
                name = f"{name}_{image.id}"
            taken.add(name.casefold())
        names.append(name)
    return names


def _remove_stale_temporaries(out: Path) -> None:
    """Delete half-written exports of processes that died (their pid is in the folder name)."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


# -- formats: each returns {image name: [(file, axis, slice) holding its mask]}; axis/slice only inside volumes --

Placement = tuple[str, "int | None", "int | None"]


def _write_png(store: Store, tmp: Path, items: list[_Item]) -> dict[str, list[Placement]]:
    (tmp / "masks").mkdir()
    files = {}
    for item in items:
        relpath = f"masks/{item.name}.png"
        Image.fromarray(np.where(item.pixels(store), 255, 0).astype(np.uint8)).save(tmp / relpath)
        files[item.name] = [(relpath, None, None)]
    return files


def _write_coco(store: Store, tmp: Path, items: list[_Item]) -> dict[str, list[Placement]]:
    from pycocotools import mask as mask_utils

    images, annotations = [], []
    originals = Counter(Path(item.image.original_path).name.casefold() for item in items)
    for item in items:
        image = item.image
        original = Path(image.original_path).name
        single = image.frame_index is None and image.slice_index is None
        if single and originals[original.casefold()] == 1:
            file_name = original
        else:  # a frame, a slice, or a file name another exported image has too: the export's unique name
            file_name = f"{item.name}{Path(original).suffix if single else '.png'}"
        images.append({"id": image.id, "file_name": file_name,
                       "width": image.width, "height": image.height, "adasam_name": item.name})
        pixels = item.pixels(store)
        if pixels.any():
            rle = mask_utils.encode(np.asfortranarray(pixels.astype(np.uint8)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image.id, "category_id": 1, "iscrowd": 0,
                "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            })
    label = store.get_setting(LABEL_NAME, "lesion")
    document = {"info": {"description": f"ADA-SAM Studio export of {store.root}", "date_created": utc_now()},
                "images": images, "annotations": annotations,
                "categories": [{"id": 1, "name": label, "supercategory": label}]}
    (tmp / "annotations.json").write_text(json.dumps(document))
    return {item.name: [("annotations.json", None, None)] for item in items}


def _write_nifti(store: Store, tmp: Path, items: list[_Item]) -> dict[str, list[Placement]]:
    import nibabel as nib

    files: dict[str, list[Placement]] = {item.name: [] for item in items}
    by_id = {item.image.id: item for item in items}
    volume_ids = [row[0] for row in store.conn.execute(
        "SELECT DISTINCT volume_id FROM image_sources WHERE volume_id IS NOT NULL ORDER BY volume_id")]
    names: set[str] = set()
    for volume_id in volume_ids:
        placed = [(by_id[image_id], position) for image_id, position in store.conn.execute(
            "SELECT image_id, position FROM image_sources WHERE volume_id = ? ORDER BY position", (volume_id,))
            if image_id in by_id]
        if not placed:
            continue
        volume = store.volume(volume_id)
        name = f"{stem(Path(volume['path']))}_axis{volume['axis']}"
        name = f"{name}_{volume_id}" if name in names else name
        names.add(name)
        relpath = f"volumes/{name}.nii.gz"
        data = np.zeros(volume["shape"], dtype=np.uint8)
        for item, position in placed:
            _slice_view(data, volume["axis"], position)[...] = item.pixels(store).T
            files[item.name].append((relpath, volume["axis"], position))
        (tmp / "volumes").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.asarray(volume["affine"])), tmp / relpath)
    for item in items:
        if not files[item.name]:
            (tmp / "masks").mkdir(exist_ok=True)
            relpath = f"masks/{item.name}.nii.gz"
            pixels = item.pixels(store).T[:, :, None].astype(np.uint8)
            nib.save(nib.Nifti1Image(pixels, np.eye(4)), tmp / relpath)
            files[item.name].append((relpath, None, None))
    return files


def _write_nnunet(store: Store, tmp: Path, items: list[_Item]) -> dict[str, list[Placement]]:
    """An nnU-Net v2 raw dataset: each labeled image (or slice) a 2D case, `imagesTr/<name>_<channel>.nii.gz` with
    the stored intensities (nnU-Net normalises them itself) and `labelsTr/<name>.nii.gz` (0 background, 1 target),
    both x, y, 1 with an identity affine, and `dataset.json`. Every case has the same channels: colour images stay
    R, G, B when all images are colour, and become grey (their channel mean) in a mixed workspace. Cases of the test
    split go to `imagesTs/` and `labelsTs/` (nnUNetv2_train reads only the Tr folders). Slices of a
    partly labeled volume are cases of their own, so no unlabeled slice is taught as background."""
    import nibabel as nib

    (tmp / "imagesTr").mkdir()
    (tmp / "labelsTr").mkdir()
    colour = all(item.image.channels == 3 for item in items)
    files = {}
    for item in items:
        trained = item.image.split != "test"  # test cases go to imagesTs/labelsTs: nnUNetv2_train must not see them
        images, labels = ("imagesTr", "labelsTr") if trained else ("imagesTs", "labelsTs")
        (tmp / images).mkdir(exist_ok=True)
        (tmp / labels).mkdir(exist_ok=True)
        pixels = store.load_image(item.image.id)
        if pixels.ndim == 3 and not colour:
            pixels = pixels.mean(axis=2)
        channels = [pixels[..., c] for c in range(3)] if colour else [pixels]
        for index, channel in enumerate(channels):
            if channel.dtype not in (np.uint8, np.uint16, np.int16, np.float32):
                channel = channel.astype(np.float32)
            nib.save(nib.Nifti1Image(np.ascontiguousarray(channel.T[:, :, None]), np.eye(4)),
                     tmp / images / f"{item.name}_{index:04d}.nii.gz")
        relpath = f"{labels}/{item.name}.nii.gz"
        nib.save(nib.Nifti1Image(item.pixels(store).T[:, :, None].astype(np.uint8), np.eye(4)), tmp / relpath)
        files[item.name] = [(relpath, None, None)]
    label = store.get_setting(LABEL_NAME, "lesion")
    dataset = {"name": store.root.resolve().name, "description": f"ADA-SAM Studio export of {store.root}",
               "channel_names": {"0": "R", "1": "G", "2": "B"} if colour else {"0": "image"},
               "labels": {"background": 0, label: 1}, "numTraining": sum(i.image.split != "test" for i in items),
               "file_ending": ".nii.gz"}
    (tmp / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return files


def _with_dicom_sources(items: list[_Item]) -> tuple[list[_Item], list[tuple[str, str]]]:
    """(items whose source is a readable single-frame DICOM file, with its header kept on the item; (name, why not)
    for the others): a DICOM SEG can only reference DICOM instances."""
    import pydicom

    kept, skipped = [], []
    for item in items:
        if not item.image.modality.startswith("DICOM"):
            skipped.append((item.name, "not imported from a DICOM file"))
            continue
        if item.image.frame_index is not None:
            skipped.append((item.name, "a frame of a multi-frame DICOM file (not supported yet)"))
            continue
        try:
            item.source = pydicom.dcmread(item.image.original_path, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - moved, deleted or unreadable since the import
            skipped.append((item.name, f"its source {item.image.original_path} cannot be read ({first_line(exc)})"))
            continue
        kept.append(item)
    return kept, skipped


def _write_dicom_seg(store: Store, tmp: Path, items: list[_Item]) -> dict[str, list[Placement]]:
    """One DICOM SEG per source volume (the slices of a series the import stacked by their geometry),
    `dicom-seg/<SeriesInstanceUID>.dcm`, and one per other source image, `dicom-seg/<SOPInstanceUID>.dcm`
    (highdicom): a binary segment on each labeled slice, referencing its source instance, so a PACS or viewer (OHIF,
    3D Slicer) overlays it. Ultrasound and secondary captures carry no geometry, and a series of them in one SEG was
    refused, aborting the whole export; a volume highdicom still refuses is written image by image, and an image it
    refuses alone is left out with why (`refused`). No-finding slices, like unlabeled ones, hold no frame (the
    manifest tells them apart). Masks a person accepted from the model make the segment SEMIAUTOMATIC, else MANUAL."""
    (tmp / "dicom-seg").mkdir()
    groups: dict[str, list[_Item]] = {}
    for item in items:
        series = getattr(item.source, "SeriesInstanceUID", None)
        stacked = item.image.volume_id is not None and series is not None and "FrameOfReferenceUID" in item.source
        groups.setdefault(str(series) if stacked else str(getattr(item.source, "SOPInstanceUID", item.name)),
                          []).append(item)
    label = store.get_setting(LABEL_NAME, "lesion")
    files: dict[str, list[Placement]] = {}
    work, written = list(groups.items()), 0
    while work:
        uid, members = work.pop()
        try:
            seg = _segmentation(store, members, label, series_number=9001 + written)
        except (ValueError, AttributeError) as exc:  # highdicom's refusals, or a header lacking a tag (pydicom)
            if len(members) > 1:  # image by image, as lone images
                work += [(str(getattr(m.source, "SOPInstanceUID", m.name)), [m]) for m in members]
            else:
                members[0].refused = f"DICOM SEG refused for its source ({type(exc).__name__}: {first_line(exc)})"
            continue
        relpath = f"dicom-seg/{uid}.dcm"
        seg.save_as(tmp / relpath)
        written += 1
        files.update({item.name: [(relpath, None, None)] for item in members})
    return files


def _segmentation(store: Store, members: list[_Item], label: str, series_number: int) -> Any:
    """The highdicom Segmentation of `members` (one source series, or one image)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    assisted = any(item.mask.origin == "accepted_prediction" for item in members)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label,
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
        segmented_property_type=hd.sr.CodedConcept("52988006", "SCT", "Lesion"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if assisted
        else hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="ADA-SAM", family=codes.cid7162.ArtificialIntelligence, version="0.1.0") if assisted else None)
    return hd.seg.Segmentation(
        source_images=[item.source for item in members],
        pixel_array=np.stack([item.pixels(store) for item in members]).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[segment],
        series_instance_uid=generate_uid(), series_number=series_number, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="ADA-SAM Studio", manufacturer_model_name="adasam",
        software_versions="0.1.0", device_serial_number="none",
        series_description=f"ADA-SAM Studio {label} masks")


def _slice_view(data: np.ndarray, axis: int, position: int) -> np.ndarray:
    index: list[Any] = [slice(None)] * data.ndim
    index[axis] = position
    return data[tuple(index)]


# -- manifest and provenance -----------------------------------------------------------------------------------


def _write_manifest(store: Store, tmp: Path, items: list[_Item], mask_files: dict[str, list[Placement]]) -> None:
    with open(tmp / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        for item in items:
            image, mask = item.image, item.mask
            volume = store.volume(image.volume_id)["path"] if image.volume_id is not None else ""
            writer.writerow({
                "name": item.name, "image_id": image.id, "sha256": image.sha256, "original_path": image.original_path,
                "width": image.width, "height": image.height, "split": image.split,
                "has_lesion": "" if image.has_lesion is None else int(image.has_lesion),
                "mask_file": mask_files[item.name][0][0], "empty": int(item.empty), "origin": mask.origin,
                "annotator": mask.annotator, "created_at": mask.created_at, "model_version": mask.model_version or "",
                "mask_version": mask.version, "volume": volume,
                "slice_index": "" if image.slice_index is None else image.slice_index,
                "frame_index": "" if image.frame_index is None else image.frame_index,
            })


def _write_provenance(store: Store, tmp: Path, items: list[_Item], fmt: str, include_predictions: bool) -> None:
    document = {
        "exported_at": utc_now(), "workspace": str(store.root.absolute()), "format": fmt,
        "include_predictions": include_predictions, "images": {
            item.name: {"image_id": item.image.id, "sha256": item.image.sha256,
                        "original_path": item.image.original_path, "origin": item.mask.origin,
                        "annotator": item.mask.annotator, "time": item.mask.created_at,
                        "model_version": item.mask.model_version, "mask_version": item.mask.version,
                        "parent_version": item.mask.parent_version}
            for item in items},
    }
    (tmp / "provenance.json").write_text(json.dumps(document, indent=1))


# -- validation: read the export back as a user would and compare with the workspace ---------------------------


def _validate(store: Store, tmp: Path, fmt: str, items: list[_Item], mask_files: dict[str, list[Placement]]) -> None:
    with open(tmp / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    provenance = json.loads((tmp / "provenance.json").read_text())
    if [r["name"] for r in rows] != [i.name for i in items] or set(provenance["images"]) != {i.name for i in items}:
        raise WorkspaceError("export check failed: manifest or provenance does not list every exported image")
    if fmt == "nnunet":
        dataset = json.loads((tmp / "dataset.json").read_text())
        for folder, kept in (("imagesTr", [i for i in items if i.image.split != "test"]),
                             ("imagesTs", [i for i in items if i.image.split == "test"])):
            files = list((tmp / folder).iterdir()) if (tmp / folder).is_dir() else []
            if {p.name.rsplit("_", 1)[0] for p in files} != {i.name for i in kept} or \
                    len(files) != len(kept) * len(dataset["channel_names"]):
                raise WorkspaceError(f"export check failed: {folder} does not match the labeled images")
        if dataset["numTraining"] != sum(i.image.split != "test" for i in items):
            raise WorkspaceError("export check failed: dataset.json's numTraining does not match imagesTr")
    reader = _Reader(tmp)
    for item in items:
        for relpath, axis, position in mask_files[item.name]:
            if not np.array_equal(reader.mask(item, relpath, axis, position), item.pixels(store)):
                raise WorkspaceError(f"export check failed: {relpath} does not hold the mask of {item.name}")


class _Reader:
    """Reads masks back from exported files; keeps the last file open (the COCO file, or the current volume)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._last: tuple[str, Any] = ("", None)

    def _open(self, relpath: str) -> Any:
        if self._last[0] != relpath:
            path = self.root / relpath
            if relpath.endswith(".png"):
                with Image.open(path) as image:
                    content: Any = np.array(image) > 0
            elif relpath.startswith("dicom-seg/"):
                import highdicom as hd

                content = hd.seg.segread(path)
            elif relpath.endswith(".json"):
                from pycocotools.coco import COCO

                with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
                    content = COCO(str(path))
            else:
                import nibabel as nib

                content = np.asanyarray(nib.load(path).dataobj) > 0
            self._last = (relpath, content)
        return self._last[1]

    def mask(self, item: _Item, relpath: str, axis: int | None, position: int | None) -> np.ndarray:
        content = self._open(relpath)
        if relpath.endswith(".png"):
            return content
        if relpath.startswith("dicom-seg/"):
            pixels = content.get_pixels_by_source_instance(
                source_sop_instance_uids=[str(item.source.SOPInstanceUID)], segment_numbers=[1],
                ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
            return pixels[0, :, :, 0] > 0
        if relpath.endswith(".json"):
            mask = np.zeros((item.image.height, item.image.width), dtype=bool)
            with warnings.catch_warnings():  # pycocotools' own NumPy 2 deprecation notice
                warnings.simplefilter("ignore", DeprecationWarning)
                for annotation in content.loadAnns(content.getAnnIds(imgIds=[item.image.id])):
                    mask |= content.annToMask(annotation) > 0
            return mask
        if axis is None or position is None:
            return content[:, :, 0].T
        return _slice_view(content, axis, position).T
