#!/usr/bin/env bash
# Install (idempotent), then start ADA-SAM Studio on the default workspace (data/workspace) at http://127.0.0.1:7860.
# On first run the empty workspace is filled with demo images (BUSI from ../shared/datasets/busi when present,
# otherwise generated phantoms). Extra arguments go to `adasam serve` (e.g. --port 8000, --auth users.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/adasam serve data/workspace "$@"
