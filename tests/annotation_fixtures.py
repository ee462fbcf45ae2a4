"""Small generated images in every importable format, and helpers shared by the annotation tests."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "busi"


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def grey8(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def rgb8(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def grey16(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return rng(seed).integers(0, 65536, (h, w), dtype=np.uint16)


def rgb16(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return rng(seed).integers(0, 65536, (h, w, 3), dtype=np.uint16)


def write_image(path: Path, pixels: np.ndarray, **options) -> Path:
    """Write with Pillow (or pypng/tifffile for 16-bit colour, which Pillow cannot write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels.dtype == np.uint16 and pixels.ndim == 3:
        if path.suffix == ".png":
            import png

            h, w, _ = pixels.shape
            with open(path, "wb") as handle:
                png.Writer(w, h, greyscale=False, bitdepth=16).write(handle, pixels.reshape(h, w * 3))
        else:
            import tifffile

            tifffile.imwrite(path, pixels, photometric="rgb")
        return path
    Image.fromarray(pixels).save(path, **options)
    return path


def write_multipage_tiff(path: Path, pages: list[np.ndarray]) -> Path:
    images = [Image.fromarray(p) for p in pages]
    images[0].save(path, save_all=True, append_images=images[1:])
    return path


def write_dicom(path: Path, raw: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0,
                window: tuple[float, float] | None = None, modality: str = "CT",
                photometric: str = "MONOCHROME2") -> Path:
    """A minimal valid DICOM file: raw stored values (frames first when 3-D), rescale and window attributes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = "TEST"
    frames = raw if raw.ndim == 3 else raw[None]
    if raw.ndim == 3:
        ds.NumberOfFrames = raw.shape[0]
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = raw.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if raw.dtype.kind == "i" else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def make_dataset(root: Path, n: int = 6, size: tuple[int, int] = (20, 16), splits: list[str] | None = None,
                 seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The project's dataset layout: images/<id>.png, masks/<id>.png (0/255) and manifest.csv.

    Returns id -> (image, boolean mask)."""
    generator = rng(seed)
    h, w = size
    out = {}
    rows = []
    for index in range(n):
        name = f"case_{index:03d}"
        image = generator.integers(0, 256, (h, w), dtype=np.uint8)
        mask = np.zeros((h, w), dtype=np.uint8)
        if index % 3:
            y, x = generator.integers(0, h - 4), generator.integers(0, w - 4)
            mask[y:y + 4, x:x + 4] = 255
        write_image(root / "images" / f"{name}.png", image)
        write_image(root / "masks" / f"{name}.png", mask)
        split = splits[index] if splits else "pool"
        rows.append({"id": name, "label": "x", "has_lesion": int(mask.any()), "width": w, "height": h,
                     "split": split, "dup_group": f"g{index}", "source": "generated"})
        out[name] = (image, mask > 0)
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def busi_subset(dest: Path, ids: list[str]) -> Path:
    """Copy a few BUSI images, masks and their manifest rows into the dataset layout under `dest`."""
    (dest / "images").mkdir(parents=True)
    (dest / "masks").mkdir()
    with open(BUSI / "manifest.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [row for row in reader if row["id"] in ids]
        fields = reader.fieldnames
    for row in rows:
        shutil.copy(BUSI / "images" / f"{row['id']}.png", dest / "images")
        shutil.copy(BUSI / "masks" / f"{row['id']}.png", dest / "masks")
    with open(dest / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return dest


def seed_images(store, n: int, split_every: int = 0) -> list[int]:
    """Register n tiny distinct 8-bit images directly (no import); every `split_every`-th goes to val."""
    from annotation.records import ImageRecord

    records = []
    for index in range(n):
        pixels = np.full((4, 5), index % 256, dtype=np.uint8)
        pixels[0, 0] = index // 256
        sha, relpath = store.files.put(pixels, "images")
        split = "val" if split_every and index % split_every == 0 else "pool"
        records.append(ImageRecord(sha256=sha, file=relpath, name=f"img{index}", original_path=f"img{index}.png",
                                   width=5, height=4, split=split))
    return [image_id for image_id, _ in store.register_images(records)]


def label_until_empty(workspace: str, annotator: str, start=None, pause: float = 0.002) -> list[int]:
    """Worker: take tasks and mark them no-finding until the queue is empty; returns the image ids it was given.

    All workers ask for their first task at the same moment (`start` is a barrier); `pause` stands for the
    annotator's work, without which one tight loop can keep SQLite's lock to itself."""
    import time

    from annotation import Store, next_task

    given = []
    with Store(workspace) as store:
        if start is not None:
            start.wait()
        while (task := next_task(store, annotator)) is not None:
            given.append(task.image.id)
            time.sleep(pause)
            store.mark_no_finding(task.image.id, annotator)
    return given


def process_worker(workspace: str, annotator: str, start, results) -> None:
    """multiprocessing entry point around `label_until_empty`."""
    results.put((annotator, label_until_empty(workspace, annotator, start)))
