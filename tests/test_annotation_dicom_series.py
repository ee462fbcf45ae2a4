"""DICOM series as volumes: grouped by SeriesInstanceUID, ordered by ImagePositionPatient, geometry kept, and back out
as one NIfTI volume that overlays the series; broken series import as lone images with a note."""
from __future__ import annotations

import math
import zlib

import nibabel as nib
import numpy as np
import pydicom

from annotation import export_workspace, import_sources
from annotation_fixtures import seed_images, write_dicom

SPACING = (0.8, 0.9)  # PixelSpacing: between rows, between columns (mm)
ANGLE = math.radians(30)  # an oblique series: rows and columns turned 30 degrees about the patient's z
ORIENTATION = [math.cos(ANGLE), math.sin(ANGLE), 0.0, -math.sin(ANGLE), math.cos(ANGLE), 0.0]


def write_series(folder, n: int = 4, gap: float = 2.5, uid: str = "1.2.826.0.1.3680043.8.498.1",
                 drop_position: int | None = None, shape: tuple[int, int] = (6, 7), shear: float = 0.0
                 ) -> dict[int, tuple]:
    """n slices of one series at z = 10 + k * gap (and y = 7 + k * shear: a tilted gantry), written in reverse
    file-name order: slice k -> (path, pixels)."""
    slices = {}
    for k in range(n):
        pixels = np.random.default_rng([k, zlib.crc32(uid.encode()), shape[0]]).integers(0, 1000, shape)
        pixels = pixels.astype(np.int16)  # distinct in every series: the workspace stores equal pixels once
        path = write_dicom(folder / f"IM{n - k:04d}.dcm", pixels)
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = uid
        ds.StudyInstanceUID = ds.FrameOfReferenceUID = uid + ".0"  # what a scanner's files carry beside the geometry
        ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261203", "120000", "1", "A1"
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 3, n - k
        ds.SliceThickness = gap
        ds.ImageOrientationPatient = ORIENTATION
        ds.PixelSpacing = list(SPACING)
        if k != drop_position:
            ds.ImagePositionPatient = [-5.0, 7.0 + k * shear, 10.0 + k * gap]
        ds.save_as(path)
        slices[k] = (path, pixels)
    return slices


def label_series(store, folder) -> tuple[dict, np.ndarray]:
    """Import a series; a mask on slice 2, no finding on slice 0 -> (slice index -> image, the mask)."""
    import_sources(store, [folder], progress=False)
    by_slice = {image.slice_index: image for image in store.images()}
    mask = np.zeros((6, 7), dtype=bool)
    mask[1:4, 2:6] = True
    store.save_mask(by_slice[2].id, mask, "alice")
    store.mark_no_finding(by_slice[0].id, "alice")
    return by_slice, mask


def test_a_series_imports_as_one_volume_in_position_order(store, tmp_path):
    slices = write_series(tmp_path / "ct")
    summary = import_sources(store, [tmp_path / "ct"], progress=False)
    assert (summary.added, summary.series, summary.skipped, summary.notes) == (4, 1, [], [])
    images = store.images()
    assert len({image.volume_id for image in images}) == 1 and images[0].volume_id is not None
    by_slice = {image.slice_index: image for image in images}
    for k, (path, pixels) in slices.items():
        assert by_slice[k].original_path == str(path.absolute())
        assert np.array_equal(store.load_image(by_slice[k].id), pixels)
    volume = store.volume(images[0].volume_id)
    assert volume["shape"] == [7, 6, 4] and volume["axis"] == 2
    again = import_sources(store, [tmp_path / "ct"], progress=False)
    assert (again.added, again.duplicates) == (0, 4) and len({i.volume_id for i in store.images()}) == 1


def test_the_volume_affine_maps_voxels_to_the_series_patient_positions(store, tmp_path):
    write_series(tmp_path / "ct")
    import_sources(store, [tmp_path / "ct"], progress=False)
    affine = np.array(store.volume(store.images()[0].volume_id)["affine"])
    row_cosine, column_cosine = np.array(ORIENTATION[:3]), np.array(ORIENTATION[3:])
    for i, j, k in [(0, 0, 0), (6, 0, 0), (0, 5, 0), (3, 2, 3)]:  # column, row, slice
        lps = np.array([-5.0, 7.0, 10.0 + 2.5 * k]) + row_cosine * SPACING[1] * i + column_cosine * SPACING[0] * j
        ras = lps * [-1, -1, 1]
        assert np.allclose(affine @ [i, j, k, 1], [*ras, 1], atol=1e-6), (i, j, k)


def test_a_tilted_gantry_series_has_the_affine_of_its_slanted_slices(store, tmp_path):
    shear = 2.5 * np.tan(np.radians(20))  # each slice 20 degrees off the normal: 0.91 mm more along y
    write_series(tmp_path / "ct", shear=shear)
    import_sources(store, [tmp_path / "ct"], progress=False)
    affine = np.array(store.volume(store.images()[0].volume_id)["affine"])
    for k in range(4):
        lps = np.array([-5.0, 7.0 + k * shear, 10.0 + 2.5 * k])
        assert np.allclose(affine @ [0, 0, k, 1], [*(lps * [-1, -1, 1]), 1], atol=1e-6), k


def test_masks_of_a_series_export_as_one_nifti_volume(store, tmp_path):
    write_series(tmp_path / "ct")
    by_slice, mask = label_series(store, tmp_path / "ct")
    export_workspace(store, tmp_path / "out", "nifti")
    (volume_file,) = (tmp_path / "out" / "volumes").iterdir()
    volume = nib.load(volume_file)
    assert volume.shape == (7, 6, 4)
    assert np.allclose(volume.affine, store.volume(by_slice[2].volume_id)["affine"])
    expected = np.zeros((7, 6, 4), dtype=np.uint8)
    expected[:, :, 2] = mask.T
    assert np.array_equal(np.asanyarray(volume.dataobj), expected)


def test_a_broken_series_imports_as_lone_images_with_a_note_per_file(store, tmp_path):
    write_series(tmp_path / "ct", drop_position=1)
    summary = import_sources(store, [tmp_path / "ct"], progress=False)
    assert (summary.added, summary.series, summary.skipped) == (4, 0, [])
    assert len(summary.notes) == 4 and all("lacks its geometry" in note and "lone image" in note
                                           for _, note in summary.notes)
    assert all(image.volume_id is None and image.slice_index is None for image in store.images())


def test_uneven_gaps_and_mixed_sizes_are_not_a_volume(store, tmp_path):
    write_series(tmp_path / "a", n=3, uid="1.2.3.4")
    (tmp_path / "a" / "IM0002.dcm").unlink()  # z = 10 and 15 left: one even gap, still a volume
    write_series(tmp_path / "b", n=3, uid="1.2.3.5")
    write_series(tmp_path / "b2", n=1, uid="1.2.3.5", shape=(8, 7))  # one more file of series b, another size
    write_series(tmp_path / "c", n=4, uid="1.2.3.6")
    (tmp_path / "c" / "IM0003.dcm").unlink()  # z = 10, 15, 17.5: uneven
    summary = import_sources(store, [tmp_path / name for name in ("a", "b", "b2", "c")], progress=False)
    notes = {note.split(":")[0]: note for _, note in summary.notes}
    assert summary.series == 1  # a: two slices 5 mm apart make a (thin) volume
    assert "differ in size" in notes["series 1.2.3.5"] and "uneven" in notes["series 1.2.3.6"]
    assert summary.added == 2 + 4 + 3 and summary.skipped == []


def test_dicom_seg_export_references_the_series_and_reads_back(store, tmp_path):
    import highdicom as hd

    slices = write_series(tmp_path / "ct")
    by_slice, mask = label_series(store, tmp_path / "ct")
    plain = seed_images(store, 1)[0]  # a PNG-like image: no DICOM source, so not in the SEG
    store.save_mask(plain, np.eye(4, 5, dtype=bool), "bob")
    summary = export_workspace(store, tmp_path / "out", "dicom-seg")
    assert summary.images == 2 and summary.skipped == [("img0", "not imported from a DICOM file")]
    (seg_file,) = (tmp_path / "out" / "dicom-seg").iterdir()
    assert seg_file.name == "1.2.826.0.1.3680043.8.498.1.dcm"
    seg = hd.seg.segread(seg_file)
    assert seg.SegmentSequence[0].SegmentLabel == "lesion" and seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    source = pydicom.dcmread(slices[2][0])
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    referenced = {ref.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence
                  for ref in series.ReferencedInstanceSequence}
    assert source.SOPInstanceUID in referenced
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1],
                                               ignore_spatial_locations=True)
    assert np.array_equal(pixels[0, :, :, 0] > 0, mask)
    manifest = (tmp_path / "out" / "manifest.csv").read_text()
    assert "img0" not in manifest and manifest.count("dicom-seg/") == 2


def test_dicom_seg_export_of_a_workspace_without_dicom_says_why(store, tmp_path):
    import pytest

    from annotation import WorkspaceError

    store.mark_no_finding(seed_images(store, 1)[0], "alice")
    with pytest.raises(WorkspaceError, match="nothing to export as DICOM SEG.*not imported from a DICOM file"):
        export_workspace(store, tmp_path / "out", "dicom-seg")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))  # nor a temporary folder


def test_dicom_seg_export_of_images_without_a_volume_writes_one_seg_each(store, tmp_path):
    """A series the import could not stack (no geometry, as ultrasound, or a slice without its position) went into
    one SEG, which highdicom refused, and the whole export failed. Each such image gets a SEG of its own; one that
    highdicom refuses even alone (here a file without study and series UIDs) is listed as skipped, with why, and the
    rest are exported."""
    import highdicom as hd

    slices = write_series(tmp_path / "ct", drop_position=1)  # imported as four lone images
    for path, _ in slices.values():  # ultrasound-like: no geometry at all, but the positionless one
        ds = pydicom.dcmread(path)
        if "ImagePositionPatient" in ds:
            del ds.ImageOrientationPatient, ds.ImagePositionPatient, ds.PixelSpacing, ds.FrameOfReferenceUID
        ds.save_as(path)
    bare = write_dicom(tmp_path / "ct" / "bare.dcm", np.arange(42, dtype=np.int16).reshape(6, 7))
    import_sources(store, [tmp_path / "ct"], progress=False)
    by_path = {image.original_path: image for image in store.images()}
    masks = {}
    for k, (path, pixels) in [*slices.items(), ("bare", (bare, np.zeros((6, 7))))]:
        masks[k] = np.zeros(pixels.shape, bool)
        masks[k][1, 2] = True
        store.save_mask(by_path[str(path.absolute())].id, masks[k], "alice")
    summary = export_workspace(store, tmp_path / "out", "dicom-seg")
    assert summary.images == 4 and len(summary.skipped) == 1
    assert summary.skipped[0][0] == by_path[str(bare.absolute())].name
    assert "DICOM SEG refused for its source" in summary.skipped[0][1]
    assert len(list((tmp_path / "out" / "dicom-seg").iterdir())) == 4
    for k in range(4):
        source = pydicom.dcmread(slices[k][0])
        seg = hd.seg.segread(tmp_path / "out" / "dicom-seg" / f"{source.SOPInstanceUID}.dcm")
        pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1],
                                                   ignore_spatial_locations=True)
        assert np.array_equal(pixels[0, :, :, 0] > 0, masks[k])
