"""The workspace sub-commands (import, export, backup, status) as a user runs them."""
from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from app import workspace_commands
from annotation import WorkspaceError
from app.cli import main
from annotation_fixtures import grey8, make_dataset, write_image


def run(*argv) -> int:
    parser = argparse.ArgumentParser(prog="adasam")
    workspace_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def test_import_status_export_backup(tmp_path, capsys):
    make_dataset(tmp_path / "set", n=4, splits=["pool", "pool", "val", "test"])
    (tmp_path / "set" / "images" / "bad.png").write_text("not an image")
    ws = tmp_path / "ws"
    assert run("import", ws, tmp_path / "set", "--quiet") == 0
    out = capsys.readouterr().out
    assert "imported 4 new images (0 already there), 4 masks; 1 skipped" in out
    assert "bad.png: not a PNG image: the content is text" in out

    assert run("status", ws) == 0
    status = capsys.readouterr().out
    assert "images      4 (pool 2, test 1, val 1)" in status
    assert "masked      4" in status and "leased      0" in status and "model       none" in status

    for fmt in ("png", "coco", "nifti"):
        assert run("export", ws, "--format", fmt, "--out", tmp_path / fmt) == 0
        assert (tmp_path / fmt / "manifest.csv").exists() and (tmp_path / fmt / "provenance.json").exists()
    assert run("backup", ws, tmp_path / "backup.db") == 0
    copy = sqlite3.connect(tmp_path / "backup.db")
    assert copy.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 4
    copy.close()


def test_user_errors_are_one_line_command_errors(tmp_path, capsys):
    assert main(["status", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adasam status: error: ") and "no workspace" in err and len(err.splitlines()) == 1
    assert run("import", tmp_path / "ws", tmp_path / "nothing-here", "--quiet") == 1  # nothing imported: a failure
    assert f"skipped {tmp_path / 'nothing-here'}: no such file or directory" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "ws"), "--format", "png", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "nothing to export" in err and len(err.splitlines()) == 1
    with pytest.raises(WorkspaceError, match="no workspace"):  # below the edge, the library's own error
        run("status", tmp_path / "missing")


def test_paths_and_numbers_that_cannot_work_are_one_line_errors(tmp_path, capsys):
    """A file where a folder must go, and numbers out of range: a message naming them, never a traceback."""
    (tmp_path / "a-file").write_text("x")
    for argv, said in ((["import", str(tmp_path / "a-file"), str(tmp_path)], "a-file"),
                       (["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--steps", "0"],
                        "--steps must be at least 1"),
                       (["serve", str(tmp_path / "ws"), "--port", "99999"], "--port must be 0-65535"),
                       (["serve", str(tmp_path / "ws"), "--host", "a..b", "--no-auth"], "--host a..b: not a name"),
                       (["trainer", "--server", "http://127.0.0.1:1", "--token", str(tmp_path / "a-file"), "--poll",
                         "-1"], "--poll must be a number of seconds above 0")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"adasam {argv[0]}: error: ") and said in err and len(err.splitlines()) == 1, err


def test_import_refuses_an_axis_a_volume_cannot_have(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        run("import", tmp_path / "ws", tmp_path, "--axis", "5")
    assert exited.value.code == 2 and "--axis: invalid choice: 5" in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """`adasam status WS | head -1`: no BrokenPipeError traceback, the exit status of a process killed by SIGPIPE."""
    write_image(tmp_path / "src" / "a.png", grey8())
    assert run("import", tmp_path / "ws", tmp_path / "src", "--quiet") == 0
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "status", str(tmp_path / "ws")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[1])
    process.stdout.close()  # before it writes a line
    assert process.wait(timeout=120) == 141
    assert b"Traceback" not in process.stderr.read()


def test_import_of_nothing_but_bad_files_exits_1(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(b"")
    assert run("import", tmp_path / "ws", tmp_path / "src", "--quiet") == 1


def test_import_max_megapixels_sets_the_size_limit(tmp_path, capsys):
    write_image(tmp_path / "src" / "small.png", grey8())
    Image.new("L", (1000, 1000)).save(tmp_path / "src" / "big.png")
    assert run("import", tmp_path / "ws", tmp_path / "src", "--quiet", "--max-megapixels", "0.5") == 0
    out = capsys.readouterr().out
    assert "big.png: 1000x1000 pixels (1.0 megapixels) is over the import limit of 0.5 megapixels; " \
           "raise it with --max-megapixels" in out
    assert "imported 1 new images (0 already there), 0 masks; 1 skipped" in out
    assert run("import", tmp_path / "ws", tmp_path / "src", "--quiet", "--max-megapixels", "1") == 0
    assert "imported 1 new images (1 already there), 0 masks; 0 skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        run("import", tmp_path / "ws", tmp_path / "src", "--max-megapixels", "0")
    assert exited.value.code == 2  # argparse's usage error
    assert "--max-megapixels: must be a number above 0, not 0" in capsys.readouterr().err
