"""Reading one file into 2-D pixel arrays: raster images, DICOM (rescaled, windowed, frames) and NIfTI (sliced).

The file's content decides how it is read, and must agree with its extension: a '.png' that holds text or a JPEG
is refused as wrongly named instead of being guessed at. Every failure is a DecodeError with a one-line reason.
An image, frame or slice over `max_pixels` is refused from the file's header, before its pixels are decoded.
"""
from __future__ import annotations

import string
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

RASTER = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
KINDS = {**RASTER, ".dcm": "DICOM", ".dicom": "DICOM", ".nii": "NIfTI", ".nii.gz": "NIfTI"}
PIL_FORMATS = {"PNG": {"PNG"}, "JPEG": {"JPEG", "MPO"}, "TIFF": {"TIFF"}, "BMP": {"BMP", "DIB"}}
# Per 2-D image, frame or slice: a 12000 x 12000 (144 MP) image took 36 s and 5 GB to serve.
MAX_IMAGE_PIXELS = 50_000_000


class DecodeError(Exception):
    """The file cannot be imported; the message says why, in one line."""


@dataclass(frozen=True)
class VolumeInfo:
    axis: int
    shape: tuple[int, ...]
    affine: list[list[float]]


@dataclass
class Decoded:
    """The 2-D images in one file. `positions` holds frame or slice numbers when the file holds several."""

    frames: list[np.ndarray]
    modality: str
    position_kind: str | None = None  # 'frame' or 'slice'
    window: tuple[float, float] | None = None  # (center, width) of the default display window
    invert: bool = False
    volume: VolumeInfo | None = None
    non_finite: int = 0  # NaN or infinite values found (set to the lowest finite value)


def suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def stem(path: Path) -> str:
    """File name without its extension ('.nii.gz' counts as one)."""
    return path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem


def is_dicom(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def kind_of(path: Path) -> str:
    """The format a file is imported as, from its extension (or DICOM's magic bytes when it has none, or one no
    format has: PACS exports name files by their instance UID, `1.2.840.113619.2.1`)."""
    kind = KINDS.get(suffix(path))
    if kind is None and is_dicom(path):
        kind = "DICOM"
    if kind is None:
        raise DecodeError(f"unsupported file type {suffix(path) or '(no extension)'!r}")
    return kind


def decode(path: Path, axis: int = -1, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Decoded:
    """Decode any supported file; `axis` is the NIfTI axis to slice along; `max_pixels` (None: none) per 2-D image."""
    if path.stat().st_size == 0:
        raise DecodeError("empty file")
    kind = kind_of(path)
    if kind == "DICOM":
        decoded = _decode_dicom(path, max_pixels)
    elif kind == "NIfTI":
        decoded = _decode_nifti(path, axis, max_pixels)
    else:
        decoded = _decode_raster(path, kind, max_pixels)
    return _finite(decoded)


def _finite(decoded: Decoded) -> Decoded:
    """NaN and infinite values (a float NIfTI's masked-out voxels) set to the lowest finite value, counted in
    `non_finite`: one NaN made the whole model input NaN, and the page's value range null."""
    bad = sum(int(np.count_nonzero(~np.isfinite(f))) for f in decoded.frames if f.dtype.kind == "f")
    if not bad:
        return decoded
    finite = [f[np.isfinite(f)] for f in decoded.frames if f.dtype.kind == "f"]
    low = min((float(v.min()) for v in finite if v.size), default=0.0)
    decoded.frames = [np.where(np.isfinite(f), f, low).astype(f.dtype) if f.dtype.kind == "f" else f
                      for f in decoded.frames]
    decoded.non_finite = bad
    if decoded.window is None or not all(np.isfinite(decoded.window)):
        decoded.window = percentile_window(np.stack([f.astype(np.float32) for f in decoded.frames]))
    return decoded


def check_size(width: int, height: int, max_pixels: int | None, per: str = "") -> None:
    """Refuse a 2-D image over the limit, from the sizes its header gives, so that its pixels are never decoded."""
    if max_pixels is not None and width * height > max_pixels:
        raise DecodeError(f"{width}x{height} pixels{per} ({width * height / 1e6:.1f} megapixels) is over the import "
                          f"limit of {max_pixels / 1e6:g} megapixels; raise it with --max-megapixels")


def decode_mask(path: Path, axis: int = -1, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Decoded:
    """A mask file decoded as an image is (same checks, same geometry), its frames boolean: the target is anything
    above zero, in any channel; but in a palette image its indices above zero (index 0 is the background, whatever
    colour the palette gives it), in an image whose alpha varies its opaque part (a transparent background may have
    any colour), and in a JPEG, whose compression rings around every edge, what is above half the range."""
    decoded = decode(path, axis, max_pixels)
    kind = kind_of(path)
    pages: list[np.ndarray | None] = [None] * len(decoded.frames)
    if kind in PIL_FORMATS:
        with _our_size_limit(), Image.open(path) as image:
            pages = [_page_mask(page, kind) for page in ImageSequence.Iterator(image)]
    decoded.frames = [page if page is not None else (f > 0).any(axis=-1) if f.ndim == 3 else f > 0
                      for page, f in zip(pages, decoded.frames)]
    return decoded


def picture_mask(picture: Image.Image) -> np.ndarray:
    """A mask sent as a picture (the web page's PNG, an API client's) as booleans, by `decode_mask`'s rules."""
    found = _page_mask(picture, picture.format or "PNG")
    if found is not None:
        return found
    pixels = np.asarray(picture if picture.mode in ("1", "L", "I", "I;16") else picture.convert("RGB"))
    return (pixels > 0).any(axis=-1) if pixels.ndim == 3 else pixels > 0


def _page_mask(page: Image.Image, kind: str) -> np.ndarray | None:
    """The target in one page of a raster mask, where its pixel values are not the answer (decode_mask); else None."""
    page.load()
    page = _upright(page)
    alpha = None
    if page.mode in ("LA", "PA", "RGBA"):
        alpha = np.array(page.getchannel("A"))
    elif page.mode == "P" and "transparency" in page.info:
        alpha = np.array(page.convert("RGBA").getchannel("A"))
    if alpha is not None and alpha.min() != alpha.max():
        return alpha >= 128
    if page.mode in ("P", "PA"):
        indices = np.array(page)
        return (indices[..., 0] if indices.ndim == 3 else indices) > 0
    if kind == "JPEG":
        return np.array(page.convert("RGB")).max(axis=-1) > 127
    return None


def percentile_window(values: np.ndarray) -> tuple[float, float]:
    """A robust default window (0.5th to 99.5th percentile) for data that carries none."""
    flat = values.ravel()
    flat = flat[:: max(1, flat.size // 1_000_000)]
    low, high = (float(v) for v in np.nanpercentile(flat, [0.5, 99.5]))
    if not high > low:
        high = low + 1.0
    return (low + high) / 2, high - low


def compact_integers(values: np.ndarray, source: np.dtype) -> np.ndarray:
    """Rescaled values in the smallest exact integer type (never narrower than the source), else float32."""
    if values.dtype.kind == "f" and not (np.isfinite(values).all() and (values == np.round(values)).all()):
        return values.astype(np.float32)
    if values.size == 0:
        return values.astype(np.uint8)
    low, high = values.min(), values.max()
    for dtype in (np.uint8, np.uint16, np.int16, np.int32):
        if np.dtype(dtype).itemsize < np.dtype(source).itemsize and np.dtype(source).kind in "iu":
            continue
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return values.astype(dtype)
    return values.astype(np.float32)


# -- raster images ---------------------------------------------------------------------------------------------


_PILLOW_LIMIT = threading.Lock()


@contextmanager
def _our_size_limit():
    """Lift Pillow's own decompression-bomb check (a warning, then an error at twice its limit), which would answer
    before ours without saying how to raise it; `check_size` stands in for it. Restored on leaving."""
    with _PILLOW_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _decode_raster(path: Path, kind: str, max_pixels: int | None) -> Decoded:
    with _our_size_limit():
        try:
            image = Image.open(path)  # reads the header only
        except UnidentifiedImageError:
            raise DecodeError(f"not a {kind} image: {_describe(path)}") from None
        with image:
            if image.format not in PIL_FORMATS[kind]:
                raise DecodeError(f"named {suffix(path)} but the content is {image.format}")
            frames = [_page_pixels(path, page, index, max_pixels)
                      for index, page in enumerate(ImageSequence.Iterator(image))]
    deep = [f for f in frames if f.dtype != np.uint8]
    window = percentile_window(np.stack(deep)) if deep and len({f.shape for f in deep}) == 1 else None
    if deep and window is None:
        window = percentile_window(deep[0])
    return Decoded(frames=frames, modality=kind, position_kind="frame" if len(frames) > 1 else None, window=window)


def _page_pixels(path: Path, page: Image.Image, index: int, max_pixels: int | None) -> np.ndarray:
    check_size(*page.size, max_pixels, " per page" if index else "")
    page.load()  # decodes now, so a truncated file fails here
    if _is_16bit_colour(path, page):
        return _read_16bit_colour(path, page.format or "", index)
    page = _upright(page)
    mode = page.mode
    if mode.startswith("I;16"):
        return np.array(page).astype(np.uint16)
    if mode == "I":
        pixels = np.array(page)
        return pixels.astype(np.uint16) if pixels.min() >= 0 and pixels.max() <= 65535 else pixels
    if mode == "F":
        return np.array(page, dtype=np.float32)
    if mode in ("L", "RGB"):
        return np.array(page)
    if mode in ("1", "LA", "La"):
        return np.array(page.convert("L"))
    if mode in ("P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.array(page.convert("RGB"))  # alpha is dropped: the picture is what gets annotated
    raise DecodeError(f"unsupported pixel mode {mode}")


def _upright(page: Image.Image) -> Image.Image:
    """The page as every viewer shows it: a JPEG or TIFF may store its pixels rotated or mirrored, with an EXIF
    Orientation saying how (phones, some cameras), and masks are drawn on what is shown."""
    return ImageOps.exif_transpose(page) if page.getexif().get(0x0112, 1) not in (1, None) else page


def _is_16bit_colour(path: Path, page: Image.Image) -> bool:
    """Pillow reads 16-bit colour (and 16-bit grey with alpha) as 8-bit without a word; spot it so the full depth
    can be kept."""
    if page.format == "PNG":
        with open(path, "rb") as handle:
            header = handle.read(26)
        return header[24] == 16 and header[25] in (2, 4, 6)
    if page.format == "TIFF":
        bits = page.tag_v2.get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        return page.tag_v2.get(277, 1) >= 3 and max(bits) == 16
    return False


def _read_16bit_colour(path: Path, fmt: str, index: int) -> np.ndarray:
    if fmt == "PNG":
        import png

        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        pixels = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, info["planes"])
    else:
        import tifffile

        pixels = tifffile.imread(path, key=index)
    if pixels.ndim == 3 and pixels.shape[-1] == 2:  # grey and alpha: the picture is the grey
        return np.ascontiguousarray(pixels[..., 0].astype(np.uint16))
    return np.ascontiguousarray(pixels[..., :3].astype(np.uint16))


def _describe(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(256)
    printable = set(string.printable.encode())
    if head and all(byte in printable for byte in head):
        return "the content is text"
    return "unrecognised or corrupt content"


# -- DICOM -----------------------------------------------------------------------------------------------------


def _decode_dicom(path: Path, max_pixels: int | None) -> Decoded:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path, force=not is_dicom(path))
    except Exception as exc:  # pydicom raises many types for a broken file
        raise DecodeError(f"not a readable DICOM file ({first_line(exc)})") from None
    if "PixelData" not in ds:
        raise DecodeError("DICOM file has no pixel data")
    frame_count = int(ds.get("NumberOfFrames", 1) or 1)
    if ds.get("Rows") and ds.get("Columns"):  # checked before pixel_array decodes (without them, it fails below)
        check_size(int(ds.Columns), int(ds.Rows), max_pixels, " per frame" if frame_count > 1 else "")
    try:
        raw = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", "unknown transfer syntax")
        raise DecodeError(f"cannot decode DICOM pixel data ({syntax_name}): {first_line(exc)}") from None
    colour = int(ds.get("SamplesPerPixel", 1)) > 1
    if frame_count == 1:
        raw = raw[None]
    if colour:
        values, window = raw, (None if raw.dtype == np.uint8 else percentile_window(raw))
    else:
        values = compact_integers(np.asarray(apply_modality_lut(raw, ds)), raw.dtype)
        window = _dicom_window(ds) or percentile_window(values)
    return Decoded(
        frames=[np.ascontiguousarray(frame) for frame in values],
        modality=f"DICOM:{ds.get('Modality', 'OT')}",
        position_kind="frame" if frame_count > 1 else None,
        window=window,
        invert=ds.get("PhotometricInterpretation", "") == "MONOCHROME1",
    )


def _dicom_window(ds: object) -> tuple[float, float] | None:
    """The file's own first WindowCenter/WindowWidth pair, if it has a usable one."""
    from pydicom.multival import MultiValue

    values = [getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)]
    if None in values:
        return None
    try:
        center, width = (float(v[0] if isinstance(v, (MultiValue, list, tuple)) else v) for v in values)
    except (TypeError, ValueError, IndexError):
        return None
    return (center, width) if width > 0 else None


# -- NIfTI -----------------------------------------------------------------------------------------------------


def _decode_nifti(path: Path, axis: int, max_pixels: int | None) -> Decoded:
    import nibabel as nib

    try:
        image = nib.load(path)  # the header: the voxels are read after the size check
        _check_slice_size(image.shape, axis, max_pixels)
        data = np.asanyarray(image.dataobj)
    except DecodeError:
        raise
    except Exception as exc:  # nibabel, gzip and zlib each raise their own errors for a broken file
        raise DecodeError(f"not a readable NIfTI file ({first_line(exc)})") from None
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DecodeError(f"NIfTI data is {data.ndim}-D; only 2-D and 3-D volumes can be sliced")
    if data.dtype.kind not in "iuf":
        raise DecodeError(f"unsupported NIfTI data type {data.dtype}")
    axis = axis % 3
    values = compact_integers(data, data.dtype)
    low, high = float(image.header.get("cal_min", 0)), float(image.header.get("cal_max", 0))
    window = ((low + high) / 2, high - low) if high > low else percentile_window(values)
    frames = [np.ascontiguousarray(np.take(values, k, axis=axis).T) for k in range(values.shape[axis])]
    volume = VolumeInfo(axis=axis, shape=tuple(int(n) for n in values.shape), affine=image.affine.tolist())
    return Decoded(frames=frames, modality="NIfTI", position_kind="slice", window=window, volume=volume)


def _check_slice_size(shape: tuple[int, ...], axis: int, max_pixels: int | None) -> None:
    """One slice's size from the header's shape, as `_decode_nifti` will slice it (other ranks are refused there)."""
    if len(shape) in (2, 3) or (len(shape) == 4 and shape[3] == 1):
        width, height = (int(n) for k, n in enumerate((*shape, 1)[:3]) if k != axis % 3)  # slices are transposed
        check_size(width, height, max_pixels, " per slice")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
