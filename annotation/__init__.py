"""The annotation workspace: SQLite store, importers, active-learning queue, export.

Imports nothing from app/ or model/: the UI, the trainer and the command line all stand on it.
"""
from pathlib import Path

from annotation.export import FORMATS as EXPORT_FORMATS, ExportSummary, export_workspace, export_zip
from annotation.importers import ImportSummary, import_sources
from annotation.queue import next_task, release_all_leases, release_lease, renew_lease, skip, take
from annotation.records import (
    ImageInfo,
    ImageRecord,
    MaskInfo,
    ModelInfo,
    PredictionRecord,
    RoundInfo,
    Task,
    WorkspaceCounts,
)
from annotation.store import RoundTaken, SaveRefused, Store, WorkspaceError

DEFAULT_WORKSPACE = Path(__file__).resolve().parents[1] / "data" / "workspace"

__all__ = [
    "DEFAULT_WORKSPACE", "EXPORT_FORMATS", "ExportSummary", "ImageInfo", "ImageRecord", "ImportSummary", "MaskInfo",
    "ModelInfo", "PredictionRecord", "RoundInfo", "RoundTaken", "SaveRefused", "Store", "Task", "WorkspaceCounts",
    "WorkspaceError",
    "export_workspace", "export_zip", "import_sources", "next_task", "release_all_leases", "release_lease",
    "renew_lease", "skip", "take",
]
