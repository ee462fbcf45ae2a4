"""Import: every format at its own bit depth, DICOM rescale/window/frames, NIfTI slices, masks, manifest, bad input."""
from __future__ import annotations

import gzip
import os
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from annotation import import_sources
from annotation_fixtures import (
    grey8,
    grey16,
    make_dataset,
    rgb8,
    rgb16,
    write_dicom,
    write_image,
    write_multipage_tiff,
    write_nifti,
)


def only_image(store):
    [image] = store.images()
    return image


LOSSLESS = [
    ("grey8.png", grey8(), {}),
    ("rgb8.png", rgb8(), {}),
    ("grey16.png", grey16(), {}),
    ("rgb16.png", rgb16(), {}),
    ("grey8.tif", grey8(), {}),
    ("rgb8.tiff", rgb8(), {}),
    ("grey16.tif", grey16(), {}),
    ("rgb16.tif", rgb16(), {}),
    ("grey8.bmp", grey8(), {}),
    ("rgb8.bmp", rgb8(), {}),
]


@pytest.mark.parametrize("name, pixels, options", LOSSLESS, ids=[case[0] for case in LOSSLESS])
def test_lossless_formats_keep_their_pixels_and_bit_depth(store, tmp_path, name, pixels, options):
    path = write_image(tmp_path / "src" / name, pixels, **options)
    summary = import_sources(store, [path], progress=False)
    assert (summary.added, summary.skipped) == (1, [])
    image = only_image(store)
    assert image.bit_depth == pixels.dtype.itemsize * 8
    assert image.channels == (1 if pixels.ndim == 2 else 3)
    assert (image.width, image.height) == (16, 12)
    stored = store.load_image(image.id)
    assert stored.dtype == pixels.dtype and np.array_equal(stored, pixels)
    assert store.load_display(image.id).dtype == np.uint8


@pytest.mark.parametrize("pixels", [grey8(), rgb8()], ids=["grey", "rgb"])
def test_jpeg_is_imported_at_8_bits(store, tmp_path, pixels):
    write_image(tmp_path / "src" / "photo.jpg", pixels, quality=95)
    assert import_sources(store, [tmp_path / "src"], progress=False).added == 1
    image = only_image(store)
    assert (image.modality, image.bit_depth, image.channels) == ("JPEG", 8, 3 if pixels.ndim == 3 else 1)
    assert store.load_image(image.id).shape == pixels.shape


def test_multipage_tiff_becomes_one_image_per_page(store, tmp_path):
    pages = [grey8(seed=k) for k in range(3)]
    write_multipage_tiff(tmp_path / "stack.tif", pages)
    import_sources(store, [tmp_path / "stack.tif"], progress=False)
    images = store.images()
    assert [i.frame_index for i in images] == [0, 1, 2]
    assert [i.name for i in images] == ["stack_f0000", "stack_f0001", "stack_f0002"]
    for image, page in zip(images, pages):
        assert np.array_equal(store.load_image(image.id), page)


def test_dicom_is_rescaled_and_windowed(store, tmp_path):
    raw = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16)
    write_dicom(tmp_path / "ct.dcm", raw, slope=2.0, intercept=-100.0, window=(40.0, 400.0))
    summary = import_sources(store, [tmp_path / "ct.dcm"], progress=False)
    assert summary.skipped == []
    image = only_image(store)
    stored = store.load_image(image.id)
    assert stored.dtype == np.int16 and np.array_equal(stored, raw.astype(np.int32) * 2 - 100)
    assert (image.modality, image.window_center, image.window_width) == ("DICOM:CT", 40.0, 400.0)
    display = store.load_display(image.id)
    assert display[0, 0] == 38 and display[-1, -1] == 255  # -100 is 60/400 into the window, 282 above it


def test_dicom_without_window_gets_a_percentile_window_and_monochrome1_is_inverted(store, tmp_path):
    raw = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16)
    write_dicom(tmp_path / "us", raw, modality="US", photometric="MONOCHROME1")  # no extension: found by magic
    import_sources(store, [tmp_path / "us"], progress=False)
    image = only_image(store)
    assert image.modality == "DICOM:US" and image.invert
    assert 0 < image.window_center < 191 and 0 < image.window_width <= 191
    assert store.load_display(image.id)[0, 0] == 255


def test_multiframe_dicom_is_split_into_frames(store, tmp_path):
    raw = np.stack([np.full((6, 7), k * 100, dtype=np.uint16) for k in range(4)])
    raw[:, 0, 0] = 7
    write_dicom(tmp_path / "cine.dcm", raw)
    summary = import_sources(store, [tmp_path / "cine.dcm"], progress=False)
    assert summary.added == 4
    images = store.images()
    assert [i.frame_index for i in images] == [0, 1, 2, 3]
    assert all(i.bit_depth == 16 for i in images)
    for image, frame in zip(images, raw):
        assert np.array_equal(store.load_image(image.id), frame)


@pytest.mark.parametrize("axis", [-1, 0])
def test_nifti_is_sliced_and_its_volume_recorded(store, tmp_path, axis):
    data = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4) - 50
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    affine[:3, 3] = [10, 20, 30]
    write_nifti(tmp_path / "vol.nii.gz", data, affine)
    summary = import_sources(store, [tmp_path / "vol.nii.gz"], axis=axis, progress=False)
    count = data.shape[axis]
    assert (summary.added, summary.skipped) == (count, [])
    images = store.images()
    assert [i.slice_index for i in images] == list(range(count))
    volume = store.volume(images[0].volume_id)
    assert volume["shape"] == [6, 5, 4] and volume["axis"] == axis % 3
    assert np.allclose(volume["affine"], affine)
    for image in images:
        expected = np.take(data, image.slice_index, axis=axis).T
        assert np.array_equal(store.load_image(image.id), expected)


def test_dataset_layout_masks_and_manifest_are_honoured(store, tmp_path):
    source = tmp_path / "set"
    cases = make_dataset(source, n=6, splits=["pool", "pool", "val", "test", "pool", "val"])
    summary = import_sources(store, [source], progress=False)
    assert (summary.added, summary.masks_added, summary.skipped) == (6, 6, [])
    by_name = {image.name: image for image in store.images()}
    assert [by_name[f"case_{k:03d}"].split for k in range(6)] == ["pool", "pool", "val", "test", "pool", "val"]
    for name, (_, mask) in cases.items():
        image = by_name[name]
        assert image.has_lesion == bool(mask.any())
        assert image.state == "masked" and store.latest_mask(image.id).origin == "imported"
        assert np.array_equal(store.load_mask(image.id), mask)


def test_nifti_mask_volume_is_sliced_like_its_image(store, tmp_path):
    data = np.random.default_rng(0).integers(0, 1000, (8, 6, 3)).astype(np.int16)
    mask = np.zeros((8, 6, 3), dtype=np.uint8)
    mask[2:5, 1:3, 1] = 1
    write_nifti(tmp_path / "set" / "images" / "liver.nii.gz", data)
    write_nifti(tmp_path / "set" / "masks" / "liver.nii.gz", mask)
    summary = import_sources(store, [tmp_path / "set"], progress=False)
    assert (summary.added, summary.masks_added, summary.skipped) == (3, 3, [])
    for image in store.images():
        assert np.array_equal(store.load_mask(image.id), mask[:, :, image.slice_index].T > 0)


def test_duplicates_are_found_by_content_and_reimport_is_idempotent(store, tmp_path):
    pixels = grey16()
    write_image(tmp_path / "src" / "a.png", pixels)
    write_image(tmp_path / "src" / "sub" / "a_copy.tif", pixels)
    make_dataset(tmp_path / "src" / "set", n=3)
    first = import_sources(store, [tmp_path / "src"], progress=False)
    assert (first.added, first.duplicates, first.masks_added, first.skipped) == (4, 1, 3, [])
    events = len(store.events(limit=1000))
    second = import_sources(store, [tmp_path / "src"], progress=False)
    assert (second.added, second.duplicates, second.masks_added, second.skipped) == (0, 5, 0, [])
    assert len(store.images()) == 4
    assert sum(len(store.mask_history(i.id)) for i in store.images()) == 3
    assert len(store.events(limit=1000)) == events


def test_bad_input_is_reported_and_skipped_never_half_imported(store, tmp_path):
    src = tmp_path / "src"
    cases = make_dataset(src, n=4, splits=["pool", "pool", "val", "test"])
    images = src / "images"
    write_image(images / "good.png", grey8(seed=9))
    (images / "empty.png").write_bytes(b"")
    (images / "text.png").write_text("this is not an image\n")
    full = (images / "case_000.png").read_bytes()
    (images / "truncated.png").write_bytes(full[: len(full) // 2])
    write_image(images / "jpeg_named.png", grey8(seed=3), format="JPEG")
    (images / "notes.txt").write_text("hello")
    (images / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(200))
    write_nifti(tmp_path / "whole.nii.gz", np.ones((4, 4, 4), dtype=np.int16))
    (images / "cut.nii.gz").write_bytes((tmp_path / "whole.nii.gz").read_bytes()[:60])
    (images / "junk.nii.gz").write_bytes(gzip.compress(b"not nifti"))
    write_image(images / "odd_size.png", grey8(seed=4))
    write_image(src / "masks" / "odd_size.png", np.zeros((5, 5), dtype=np.uint8))
    write_image(src / "masks" / "orphan.png", np.zeros((5, 5), dtype=np.uint8))
    outside = write_image(tmp_path / "outside" / "secret.png", grey8(seed=5))
    os.symlink(outside, images / "link_out.png")
    os.symlink(outside.parent, src / "linked_dir")

    summary = import_sources(store, [src, tmp_path / "missing"], progress=False)
    reasons = {os.path.basename(path): reason for path, reason in summary.skipped}
    expected = {
        "empty.png": "empty file",
        "text.png": "content is text",
        "truncated.png": "truncated",
        "jpeg_named.png": "content is JPEG",
        "notes.txt": "unsupported file type",
        "broken.dcm": "DICOM",
        "cut.nii.gz": "NIfTI",
        "junk.nii.gz": "NIfTI",
        "odd_size.png": "differs from image size",
        "orphan.png": "no image with the same name",
        "link_out.png": "escapes the source folder",
        "linked_dir": "escapes the source folder",
        "missing": "no such file",
    }
    for name, fragment in expected.items():
        assert name in reasons, f"{name} not reported"
        assert fragment in reasons[name], f"{name}: {reasons[name]}"
    assert len(summary.skipped) == len(expected)
    # the good files, and the image whose mask was wrong (without a mask), are in
    names = {image.name for image in store.images()}
    assert names == set(cases) | {"good", "odd_size"}
    assert store.latest_mask([i for i in store.images() if i.name == "odd_size"][0].id) is None
    assert summary.added == 6 and summary.masks_added == 4
    assert store.integrity_check() == "ok"
    assert all(store.files.path(image.file).exists() for image in store.images())
    assert np.array_equal(store.load_image([i for i in store.images() if i.name == "good"][0].id), grey8(seed=9))
    rerun = import_sources(store, [src], progress=False)
    assert (rerun.added, rerun.duplicates, rerun.masks_added) == (0, 6, 0)


def test_a_manifest_with_a_bad_split_skips_its_images(store, tmp_path):
    src = tmp_path / "set"
    make_dataset(src, n=2)
    text = (src / "manifest.csv").read_text().replace(",pool,", ",training,", 1)
    (src / "manifest.csv").write_text(text)
    summary = import_sources(store, [src], progress=False)
    assert summary.added == 1
    assert len(summary.skipped) == 1 and "split 'training'" in summary.skipped[0][1]


def test_a_manifest_naming_an_image_twice_skips_its_images(store, tmp_path):
    """Two rows for one id (say pool, then test): neither is taken, or a pool image could land in test."""
    src = tmp_path / "set"
    make_dataset(src, n=2)
    lines = (src / "manifest.csv").read_text().splitlines()
    (src / "manifest.csv").write_text("\n".join([*lines, lines[1].replace(",pool,", ",test,")]) + "\n")
    summary = import_sources(store, [src], progress=False)
    assert summary.added == 0 and len(summary.skipped) == 2
    assert all("'case_000' is on two rows" in reason for _, reason in summary.skipped)

def test_manifest_ids_may_carry_the_extension_and_rows_matching_nothing_are_noted(store, tmp_path):
    """A row that matches no image must not pass in silence: the image it meant for `test` would train in the pool."""
    src = tmp_path / "set"
    make_dataset(src, n=3, splits=["pool", "test", "val"])
    text = (src / "manifest.csv").read_text().replace("case_001,", "case_001.png,").replace("case_002,", "case_2,")
    (src / "manifest.csv").write_text(text)
    summary = import_sources(store, [src], progress=False)
    assert summary.added == 3 and summary.skipped == []
    assert {i.name: i.split for i in store.images()} == {"case_000": "pool", "case_001": "test", "case_002": "pool"}
    assert [path for path, _ in summary.notes] == [str(src / "manifest.csv")]
    assert "1 row(s) match no imported image ('case_2')" in summary.notes[0][1]
    single = import_sources(store, [src / "images" / "case_000.png"], progress=False)  # one file: no such note
    assert single.notes == []



def test_a_reimport_keeps_the_workspace_and_says_where_the_files_now_differ(store, tmp_path):
    src = tmp_path / "set"
    truth = make_dataset(src, n=3)
    assert import_sources(store, [src], progress=False).notes == []
    assert import_sources(store, [src], progress=False).notes == []  # the same files again: nothing to say
    changed = np.zeros_like(truth["case_001"][1])
    changed[:2, :2] = True
    write_image(src / "masks" / "case_001.png", np.where(changed, 255, 0).astype(np.uint8))
    (src / "manifest.csv").write_text((src / "manifest.csv").read_text().replace("case_002,x,1,16,20,pool",
                                                                                 "case_002,x,1,16,20,test"))
    summary = import_sources(store, [src], progress=False)
    notes = dict(summary.notes)
    assert (summary.added, summary.masks_added) == (0, 0) and len(notes) == 2
    assert "was kept" in notes[str(src / "masks" / "case_001.png")]
    assert "split pool, which was kept" in notes[str(src / "images" / "case_002.png")]
    by_name = {i.name: i for i in store.images()}
    assert np.array_equal(store.load_mask(by_name["case_001"].id), truth["case_001"][1])
    assert by_name["case_002"].split == "pool"


def test_a_manifest_flag_against_its_mask_is_noted(store, tmp_path):
    src = tmp_path / "set"
    make_dataset(src, n=2)  # case_000 has an empty mask, case_001 a target
    (src / "manifest.csv").write_text((src / "manifest.csv").read_text().replace("case_001,x,1,", "case_001,x,0,"))
    summary = import_sources(store, [src], progress=False)
    assert summary.added == 2 and [p for p, _ in summary.notes] == [str(src / "images" / "case_001.png")]
    assert "has_lesion 0 but its mask is not" in summary.notes[0][1]


def test_import_without_masks_leaves_images_unlabeled(store, tmp_path):
    make_dataset(tmp_path / "set", n=3)
    summary = import_sources(store, [tmp_path / "set"], with_masks=False, progress=False)
    assert (summary.added, summary.masks_added, summary.skipped) == (3, 0, [])
    assert store.counts().unlabeled == 3


def test_importing_single_files_does_not_report_the_other_masks(store, tmp_path):
    make_dataset(tmp_path / "set", n=3)
    summary = import_sources(store, [tmp_path / "set" / "images" / "case_001.png"], progress=False)
    assert (summary.added, summary.masks_added, summary.skipped) == (1, 1, [])


def test_an_image_over_the_size_limit_is_refused_from_its_header(store, tmp_path, monkeypatch):
    write_image(tmp_path / "src" / "normal.png", grey8())
    Image.new("1", (9000, 9000)).save(tmp_path / "src" / "huge.png")
    assert (tmp_path / "src" / "huge.png").stat().st_size < 100_000  # 81 megapixels in a few KB
    decoded_sizes = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded_sizes.append(self.size) or real_load(self))
    summary = import_sources(store, [tmp_path / "src"], progress=False)
    assert summary.added == 1 and only_image(store).name == "normal"
    [(path, reason)] = summary.skipped
    assert path.endswith("huge.png")
    assert reason == ("9000x9000 pixels (81.0 megapixels) is over the import limit of 50 megapixels; "
                      "raise it with --max-megapixels")
    assert (16, 12) in decoded_sizes and (9000, 9000) not in decoded_sizes  # the huge one was never decoded


def test_the_size_limit_is_configurable_and_pillows_own_check_does_not_preempt_it(store, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow would warn above 100 pixels and refuse above 200
    make_dataset(tmp_path / "set", n=1, size=(20, 16))
    write_image(tmp_path / "set" / "masks" / "case_000.png", np.zeros((40, 40), dtype=np.uint8))  # 1600 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low = import_sources(store, [tmp_path / "set"], max_pixels=319, progress=False)
        assert low.added == 0 and "16x20 pixels (0.0 megapixels) is over the import limit" in low.skipped[0][1]
        mask_too_big = import_sources(store, [tmp_path / "set"], max_pixels=1000, progress=False)
        default = import_sources(store, [tmp_path / "set"], progress=False)
    assert (mask_too_big.added, mask_too_big.masks_added) == (1, 0)
    [(path, reason)] = mask_too_big.skipped
    assert path.endswith(os.path.join("masks", "case_000.png"))
    assert reason.startswith("40x40 pixels") and reason.endswith("image imported without its mask")
    assert default.duplicates == 1 and default.skipped[0][1].startswith("mask size 40x40 differs from image size 16x20")
    assert Image.MAX_IMAGE_PIXELS == 100  # Pillow's limit is put back


def test_the_size_limit_applies_per_slice_and_frame_and_is_read_from_the_header(store, tmp_path):
    write_nifti(tmp_path / "vol.nii.gz", np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4))
    assert import_sources(store, [tmp_path / "vol.nii.gz"], max_pixels=30, progress=False).added == 4  # 6x5 slices
    refused = import_sources(store, [tmp_path / "vol.nii.gz"], max_pixels=29, progress=False)
    assert "6x5 pixels per slice (0.0 megapixels)" in refused.skipped[0][1]
    assert import_sources(store, [tmp_path / "vol.nii.gz"], axis=0, max_pixels=29, progress=False).added == 6  # 5x4

    write_dicom(tmp_path / "cine.dcm", np.zeros((3, 6, 7), dtype=np.uint16))
    refused = import_sources(store, [tmp_path / "cine.dcm"], max_pixels=41, progress=False)
    assert "7x6 pixels per frame" in refused.skipped[0][1]
    assert import_sources(store, [tmp_path / "cine.dcm"], max_pixels=42, progress=False).skipped == []

    import pydicom

    ds = pydicom.dcmread(write_dicom(tmp_path / "claims_huge.dcm", grey16()))
    ds.Rows = ds.Columns = 10000  # the header alone decides: its 12x16 pixels are never decoded
    ds.save_as(tmp_path / "claims_huge.dcm")
    refused = import_sources(store, [tmp_path / "claims_huge.dcm"], progress=False)
    assert refused.skipped[0][1].startswith("10000x10000 pixels (100.0 megapixels) is over the import limit")


def test_hidden_files_named_like_images_are_listed_never_silently_dropped(store, tmp_path):
    src = tmp_path / "set"
    make_dataset(src, n=2)
    write_image(src / "images" / "..png", grey8(seed=6), format="PNG")  # Pillow sees no extension in "..png"
    write_image(src / "images" / ".hidden.png", grey8(seed=7))
    (src / ".scan.nii.gz").write_bytes(b"x")
    write_image(src / "masks" / ".case_000.png", np.zeros((20, 16), dtype=np.uint8))
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (src / "masks" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    write_image(src / ".git" / "logo.png", grey8(seed=8))  # hidden folders stay silently skipped
    summary = import_sources(store, [src], progress=False)
    assert (summary.added, summary.masks_added) == (2, 2)
    listed = {os.path.relpath(path, src): reason for path, reason in summary.skipped}
    assert listed == {name: "hidden file (name starts with '.'): not imported; rename it to import it"
                      for name in ("images/..png", "images/.hidden.png", ".scan.nii.gz", "masks/.case_000.png")}
    assert import_sources(store, [src / "images" / ".hidden.png"], progress=False).added == 1  # named: imported


def test_a_mask_whose_image_is_ambiguous_is_given_to_no_image(store, tmp_path):
    """`a.png` and `a.tif` in images/, or two masks named `a`: which mask is whose cannot be known, so none is
    taken (one mask was given to both images) and every such mask is listed with why."""
    src = tmp_path / "set"
    square = np.zeros((8, 8), np.uint8)
    square[:2, :2] = 255
    write_image(src / "images" / "a.png", np.full((8, 8), 5, np.uint8))
    write_image(src / "images" / "a.tif", np.full((8, 8), 6, np.uint8))
    write_image(src / "masks" / "a.png", square)
    write_image(src / "images" / "b.png", np.full((8, 8), 7, np.uint8))
    write_image(src / "masks" / "b.png", square)
    write_image(src / "masks" / "b.bmp", square.T.copy())
    write_image(src / "images" / "c.png", np.full((8, 8), 8, np.uint8))
    write_image(src / "masks" / "c.png", square)
    (src / "images" / "c.json").write_text("{}")  # sidecars share the stem but are no image or mask of c
    (src / "masks" / "c.txt").write_text("notes")
    summary = import_sources(store, [src], progress=False)
    assert (summary.added, summary.masks_added) == (4, 1)
    skipped = dict(summary.skipped)
    assert set(skipped) == {str(src / "masks" / name) for name in ("a.png", "b.png", "b.bmp")} | {
        str(src / "images" / "c.json")}  # tried as an image, as before
    assert "masks" not in skipped[str(src / "images" / "c.json")]
    assert "images a.png, a.tif share its name" in skipped[str(src / "masks" / "a.png")]
    assert "masks b.bmp, b.png share a name" in skipped[str(src / "masks" / "b.png")]
    masked = [(i.name, i.original_path.endswith("c.png")) for i in store.images() if store.load_mask(i.id) is not None]
    assert masked == [("c", True)]


def test_a_volume_that_changed_since_its_import_is_refused_not_mixed_in(store, tmp_path):
    """Its slices would join the old volume's row: the stored shape stayed 3 slices, and NIfTI export then failed."""
    data = np.random.default_rng(0).integers(0, 200, (6, 6, 5)).astype(np.uint8)
    write_nifti(tmp_path / "vol.nii.gz", data[:, :, :3].copy())
    assert import_sources(store, [tmp_path / "vol.nii.gz"], progress=False).added == 3
    write_nifti(tmp_path / "vol.nii.gz", data)
    summary = import_sources(store, [tmp_path / "vol.nii.gz"], progress=False)
    assert summary.added == 0 and len(summary.skipped) == 1
    assert "changed since it was imported (shape [6, 6, 3] then, [6, 6, 5] now)" in summary.skipped[0][1]
    assert len(store.images()) == 3 and store.volume(store.images()[0].volume_id)["shape"] == [6, 6, 3]
    write_nifti(tmp_path / "vol.nii.gz", data[:, :, :3].copy())  # the same file again: nothing to refuse
    assert import_sources(store, [tmp_path / "vol.nii.gz"], progress=False).skipped == []


def test_nan_and_infinite_voxels_become_the_lowest_finite_value_and_are_noted(store, tmp_path):
    """One NaN voxel made the whole model input NaN (percentiles of NaN) and the page's value range null."""
    data = np.random.default_rng(0).normal(100, 20, (16, 16, 2)).astype(np.float32)
    data[0, 0, :] = np.nan
    data[1, 1, 0] = np.inf
    write_nifti(tmp_path / "mr.nii.gz", data)
    summary = import_sources(store, [tmp_path / "mr.nii.gz"], progress=False)
    assert summary.added == 2 and summary.notes == [(str(tmp_path / "mr.nii.gz"),
                                                     "3 NaN or infinite value(s) set to the lowest finite value")]
    finite = data[np.isfinite(data)]
    for image in store.images():
        pixels = store.load_image(image.id)
        assert np.isfinite(pixels).all() and pixels[0, 0] == finite.min()
        assert all(np.isfinite(store.value_range(image.id))) and all(np.isfinite(store.display_window(image.id)))


def test_a_file_name_that_is_not_utf8_is_imported_under_an_escaped_name(store, tmp_path):
    """SQLite text must be UTF-8: the image was skipped with a raw UnicodeEncodeError and its pixel file left behind."""
    folder = os.fsencode(tmp_path / "src")
    os.makedirs(folder)
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(folder + b"/caf\xe9.png")
    summary = import_sources(store, [tmp_path / "src"], progress=False)
    assert (summary.added, summary.skipped) == (1, [])
    image = store.images()[0]
    assert image.name == "caf\\xe9" and image.original_path == f"{tmp_path / 'src'}/caf\\xe9.png"


def _lesion_mask() -> np.ndarray:
    mask = np.zeros((16, 20), bool)
    mask[4:10, 6:14] = True
    return mask


def test_a_palette_mask_is_read_by_its_indices_not_its_colours(store, tmp_path):
    """Index 0 is the background whatever colour the palette gives it (here white, the lesion black)."""
    write_image(tmp_path / "set" / "images" / "a.png", grey8(16, 20))
    palette = Image.fromarray(_lesion_mask().astype(np.uint8), mode="P")
    palette.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    (tmp_path / "set" / "masks").mkdir()
    palette.save(tmp_path / "set" / "masks" / "a.png")
    assert import_sources(store, [tmp_path / "set"], progress=False).masks_added == 1
    assert np.array_equal(store.load_mask(only_image(store).id), _lesion_mask())


def test_a_mask_drawn_as_an_opaque_shape_on_a_transparent_background_is_read_by_its_alpha(store, tmp_path):
    write_image(tmp_path / "set" / "images" / "a.png", grey8(16, 20))
    rgba = np.full((16, 20, 4), 255, np.uint8)  # a white background ...
    rgba[..., 3] = np.where(_lesion_mask(), 255, 0)  # ... transparent outside the lesion
    (tmp_path / "set" / "masks").mkdir()
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "set" / "masks" / "a.png")
    assert import_sources(store, [tmp_path / "set"], progress=False).masks_added == 1
    assert np.array_equal(store.load_mask(only_image(store).id), _lesion_mask())


def test_a_jpeg_mask_is_read_at_half_its_range_not_at_its_compression_ringing(store, tmp_path):
    mask = np.zeros((64, 64), bool)
    yy, xx = np.mgrid[:64, :64]
    mask[(yy - 30) ** 2 + (xx - 34) ** 2 < 15 ** 2] = True
    write_image(tmp_path / "set" / "images" / "a.png", grey8(64, 64))
    (tmp_path / "set" / "masks").mkdir()
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "set" / "masks" / "a.jpg", quality=90)
    assert import_sources(store, [tmp_path / "set"], progress=False).masks_added == 1
    stored = store.load_mask(only_image(store).id)
    assert np.count_nonzero(stored != mask) <= 0.02 * mask.sum()  # "> 0" grew it by 14% in halos and speckle


def test_masks_in_subfolders_pair_with_images_in_the_same_subfolders(store, tmp_path):
    for patient, value in (("p1", 60), ("p2", 200)):
        write_image(tmp_path / "set" / "images" / patient / "x.png", np.full((16, 20), value, np.uint8))
        (tmp_path / "set" / "masks" / patient).mkdir(parents=True)
        mask = _lesion_mask() if patient == "p1" else np.roll(_lesion_mask(), 4, axis=1)
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "set" / "masks" / patient / "x.png")
    summary = import_sources(store, [tmp_path / "set"], progress=False)
    assert (summary.added, summary.masks_added, summary.skipped) == (2, 2, [])
    for image in store.images():
        expected = _lesion_mask() if store.load_image(image.id)[0, 0] == 60 else np.roll(_lesion_mask(), 4, axis=1)
        assert np.array_equal(store.load_mask(image.id), expected)


def test_a_nifti_mask_in_another_orientation_than_its_image_is_refused(store, tmp_path):
    data = np.random.default_rng(0).integers(0, 1000, (8, 6, 3)).astype(np.int16)
    mask = np.zeros((8, 6, 3), dtype=np.uint8)
    mask[0:2, 1:3, 1] = 1
    mirrored = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirrored[0, 3] = 7.0  # LAS against RAS: the same array would put the lesion at the other side
    write_nifti(tmp_path / "set" / "images" / "liver.nii.gz", data, mirrored)
    write_nifti(tmp_path / "set" / "masks" / "liver.nii.gz", mask)
    summary = import_sources(store, [tmp_path / "set"], progress=False)
    assert (summary.added, summary.masks_added) == (3, 0)
    [(path, why)] = summary.skipped
    assert path.endswith("liver.nii.gz") and "affine differs" in why


def test_a_dicom_file_named_by_its_instance_uid_is_imported(store, tmp_path):
    raw = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16)
    write_dicom(tmp_path / "export" / "1.2.826.0.1.3680043.8.498.1", raw)  # as PACS exports name them
    summary = import_sources(store, [tmp_path / "export"], progress=False)
    assert (summary.added, summary.skipped) == (1, [])


def test_16_bit_grey_with_alpha_keeps_its_depth(store, tmp_path):
    import png

    grey = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    rows = np.dstack([grey, np.full_like(grey, 65535)]).reshape(64, -1)
    with open(tmp_path / "la16.png", "wb") as handle:
        png.Writer(64, 64, greyscale=True, alpha=True, bitdepth=16).write(handle, rows.tolist())
    import_sources(store, [tmp_path / "la16.png"], progress=False)
    assert np.array_equal(store.load_image(only_image(store).id), grey)  # was cut to 8 bits


def test_an_exif_rotated_jpeg_is_stored_as_it_is_shown_and_its_mask_fits(store, tmp_path):
    stored_rotated = np.zeros((20, 30, 3), np.uint8)
    stored_rotated[:5, :5] = 255  # bright at the top left as stored; Orientation 3 shows it at the bottom right
    exif = Image.Exif()
    exif[0x0112] = 3
    (tmp_path / "set" / "images").mkdir(parents=True)
    Image.fromarray(stored_rotated).save(tmp_path / "set" / "images" / "y.jpg", exif=exif, quality=100)
    shown = np.zeros((20, 30), bool)
    shown[15:, 25:] = True  # the mask drawn on the image as viewers show it
    write_image(tmp_path / "set" / "masks" / "y.png", shown.astype(np.uint8) * 255)
    summary = import_sources(store, [tmp_path / "set"], progress=False)
    assert (summary.added, summary.masks_added, summary.skipped) == (1, 1, [])
    image = only_image(store)
    bright = store.load_image(image.id).mean(axis=-1) > 128
    assert np.array_equal(bright, shown) and np.array_equal(store.load_mask(image.id), shown)
