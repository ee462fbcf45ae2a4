"""Probe (thirty-fourth session): `adasam train` with the map head's mirrored embeddings turned off, nothing else
changed (the same random draws; only the flip is not applied). A mirrored cached embedding is not the embedding of
the mirrored image (cosine 0.82-0.85 on BUSI), so half the map head's masked examples were inputs no image
produces. Run from the repository root with `adasam train`'s arguments:

    python benchmarks/results/mirror_probe/train_without_mirroring.py --data ../shared/datasets/busi --out RUN \
        --masks 0.1 --seed S --method adasam --tags all
"""
import sys

import numpy as np

import model.train as train

_share = train.Trainer._share


def _share_unmirrored(self, batch, *aligned):
    """The only boolean array `_share` is given is the mirror draw (`Trainer._adasam_losses`): all False."""
    aligned = tuple(np.zeros_like(a) if isinstance(a, np.ndarray) and a.dtype == bool else a for a in aligned)
    return _share(self, batch, *aligned)


train.Trainer._share = _share_unmirrored

if __name__ == "__main__":
    from app.cli import main

    sys.exit(main(sys.argv[1:]))
