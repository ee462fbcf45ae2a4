"""Workspace sub-commands (import, export, backup, status): thin wrappers over `annotation`."""
from __future__ import annotations

import argparse
import sys

from annotation import EXPORT_FORMATS


def register(sub) -> None:
    """Add the workspace sub-commands to the `adasam` parser."""
    p = sub.add_parser("import", help="import images (PNG, JPEG, TIFF, BMP, DICOM, NIfTI), masks and a manifest",
                       description="Import folders or files into WORKSPACE (created if missing). Masks are matched by "
                                   "stem in a masks/ folder beside images/; manifest.csv sets split and has_lesion. "
                                   "DICOM files of one series (SeriesInstanceUID) become the slices of one volume, "
                                   "ordered by ImagePositionPatient. "
                                   "Bad files, and images over --max-megapixels, are listed and skipped; running it "
                                   "again adds nothing twice. "
                                   "Exit status 1 when files were found but none could be imported.")
    p.add_argument("workspace", help="workspace folder (e.g. data/workspace)")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="folders or files to import")
    p.add_argument("--no-masks", action="store_true", help="ignore masks/ folders (import images only)")
    p.add_argument("--axis", type=int, default=-1, choices=(-3, -2, -1, 0, 1, 2), metavar="{0,1,2}",
                   help="NIfTI axis to slice along (default: last, -1)")
    p.add_argument("--max-megapixels", type=_positive, metavar="N",
                   help="refuse images (and each frame or slice) larger than N megapixels, read from the file header "
                        "before decoding (default: 50)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_import)

    p = sub.add_parser("export", help="export the latest masks as PNG, COCO (RLE), NIfTI, nnU-Net v2 or DICOM SEG",
                       description="Export the latest mask of every labeled image (no-finding = empty mask) with "
                                   "manifest.csv and provenance.json. Accepted model predictions are included only "
                                   "with --include-predictions. NIfTI: slices of an imported volume go back into "
                                   "a mask volume with the source's shape and affine; other images get one .nii.gz "
                                   "each. nnunet: an nnU-Net v2 raw dataset (imagesTr, labelsTr, dataset.json), one "
                                   "2D case per labeled image or slice. dicom-seg: one DICOM SEG per source "
                                   "series (images not imported from DICOM are left out and listed). "
                                   "Written to a temporary folder, read back and checked, then renamed to OUT, "
                                   "which must not exist (or be empty).")
    p.add_argument("workspace")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--include-predictions", action="store_true",
                   help="also export images whose latest mask is an accepted model prediction")
    p.set_defaults(func=_export)

    p = sub.add_parser("backup", help="copy the workspace database with SQLite's online backup (safe while in use)")
    p.add_argument("workspace")
    p.add_argument("file", help="backup file to write")
    p.set_defaults(func=_backup)

    p = sub.add_parser("status", help="counts of images and labels, the latest model and training round")
    p.add_argument("workspace")
    p.set_defaults(func=_status)


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text}")
    return value


def _import(args: argparse.Namespace) -> int:
    from annotation.decode import MAX_IMAGE_PIXELS
    from annotation.importers import import_sources
    from annotation.store import Store

    max_pixels = MAX_IMAGE_PIXELS if args.max_megapixels is None else int(args.max_megapixels * 1_000_000)
    with Store(args.workspace) as store:
        summary = import_sources(store, args.sources, with_masks=not args.no_masks, axis=args.axis,
                                 progress=not args.quiet, max_pixels=max_pixels)
    for path, reason in summary.skipped:
        print(f"skipped {path}: {reason}")
    for path, note in summary.notes:
        print(f"note {path}: {note}")
    series = f", {summary.series} DICOM series as volumes" if summary.series else ""
    print(f"imported {summary.added} new images ({summary.duplicates} already there){series}, "
          f"{summary.masks_added} masks; {len(summary.skipped)} skipped")
    return 1 if summary.skipped and not (summary.added or summary.duplicates) else 0


def _export(args: argparse.Namespace) -> int:
    from annotation.export import export_workspace
    from annotation.store import Store

    with Store(args.workspace, create=False) as store:
        summary = export_workspace(store, args.out, args.format, include_predictions=args.include_predictions)
    for name, reason in summary.skipped:
        print(f"left out {name}: {reason}")
    print(f"exported {summary.images} masks ({summary.empty} empty) as {summary.format} to {summary.out}; "
          f"checked by reading them back" + (f"; {len(summary.skipped)} left out" if summary.skipped else ""))
    return 0


def _backup(args: argparse.Namespace) -> int:
    from annotation.store import Store

    with Store(args.workspace, create=False) as store:
        path = store.backup(args.file)
    print(f"backed up {store.db_path} to {path} (integrity ok); pixel files stay in {store.files.root}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from annotation.store import Store

    with Store(args.workspace, create=False) as store:
        counts = store.counts()
    splits = ", ".join(f"{name} {n}" for name, n in sorted(counts.by_split.items()))
    lines = [
        f"workspace   {args.workspace}",
        f"images      {counts.images}" + (f" ({splits})" if splits else ""),
        f"masked      {counts.masked}",
        f"no finding  {counts.no_finding}",
        f"tagged      {counts.tagged}",
        f"unlabeled   {counts.unlabeled}",
        f"leased      {counts.leased}",
    ]
    model = counts.latest_model
    lines.append("model       " + ("none" if model is None else
                                   f"{model.version} ({model.created_at}) {_metrics(model.metrics)}".rstrip()))
    rnd = counts.latest_round
    if rnd is None:
        lines.append("round       none")
    else:
        dice = "" if rnd.val_dice is None else f", val Dice {rnd.val_dice:.3f}"
        error = f", error: {rnd.error}" if rnd.error else ""
        lines.append(f"round       #{rnd.id} {rnd.status}, {rnd.labels_used} labels{dice}{error} "
                     f"(started {rnd.started_at})")
    print("\n".join(lines), file=sys.stdout)
    return 0


def _metrics(metrics: dict) -> str:
    """A model's figures on one line (not its validation fingerprint or per-image scores, which are for the check)."""
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items())
                     if k not in ("val_digest", "val_scores"))
