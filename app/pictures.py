"""Pictures between the server and the browser: PNG data URLs out (image, mask, CAM heat map) and a drawn mask in."""
from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from matplotlib import colormaps
from PIL import Image

from annotation.decode import picture_mask
from app.errors import RequestError

CAM_SIDE = 256  # the CAM is smooth: sent at most this size, the browser scales it up


def png_data_url(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def decode_mask(data_url: str, shape: tuple[int, int]) -> np.ndarray:
    """A mask PNG data URL -> bool H x W. A grey PNG (a label image, 0/1 or 0/255): any non-zero pixel is target; a
    palette or grey+alpha one as the importer reads mask files (by palette index, or its opaque part where alpha
    varies). A colour one (the canvas's, whose brush edges are anti-aliased): pixels brighter than 127 and over half
    opaque, or above 0 where every value is 0 or 1 (a label image). Those label PNGs were once saved as empty masks.

    The size is read from the PNG header and checked before any pixel is decoded: a few KB can claim 13000 x 13000."""
    prefix = "data:image/png;base64,"
    if not isinstance(data_url, str) or not data_url.startswith(prefix):
        raise RequestError("the mask must be a PNG data URL (data:image/png;base64,...)")
    try:
        raw = base64.b64decode(data_url[len(prefix):], validate=True)
        with warnings.catch_warnings():  # the size check below says it plainly
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(raw), formats=["PNG"])
    except Image.DecompressionBombError:
        raise RequestError(f"the mask claims over {Image.MAX_IMAGE_PIXELS * 2} pixels; the image is "
                           f"{shape[1]}x{shape[0]}") from None
    except (binascii.Error, OSError) as exc:
        raise RequestError(f"the mask is not a readable PNG ({exc})") from None
    with im:
        if im.size != (shape[1], shape[0]):
            raise RequestError(f"mask is {im.size[0]}x{im.size[1]}, image is {shape[1]}x{shape[0]}")
        try:
            if im.mode in ("1", "L", "I", "I;16", "P", "PA", "LA"):
                return picture_mask(im)  # as the importer reads mask files: > 0, palette index, or varying alpha
            array = np.asarray(im.convert("RGBA"))
        except (OSError, ValueError) as exc:
            raise RequestError(f"the mask is not a readable PNG ({exc})") from None
    bright = array[..., :3].max(axis=2) > (0 if array[..., :3].max() <= 1 else 127)  # 0/1 values: a label image
    return bright & (array[..., 3] > 127)


def cam_picture(cam: np.ndarray) -> np.ndarray:
    """CAM in [0, 1] -> RGBA heat map whose opacity follows the CAM, so cold regions leave the image visible."""
    h, w = cam.shape
    scale = min(1.0, CAM_SIDE / max(h, w))
    if scale < 1:
        cam = np.asarray(Image.fromarray(cam.astype(np.float32)).resize((max(1, round(w * scale)),
                                                                          max(1, round(h * scale))), Image.BILINEAR))
    rgba = (colormaps["jet"](np.clip(cam, 0, 1)) * 255).astype(np.uint8)
    rgba[..., 3] = (np.clip(cam, 0, 1) * 150).astype(np.uint8)
    return rgba
