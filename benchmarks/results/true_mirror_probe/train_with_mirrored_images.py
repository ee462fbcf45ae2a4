"""Probe (thirty-fifth session): `adasam train` whose map head, where it draws a masked image mirrored, reads the
cached embedding of the mirrored image (and its mirrored mask) instead of the mirrored embedding of the image.

A mirrored cached embedding is not the embedding of the mirrored image (cosine 0.82-0.85 on BUSI), and training
without the flip at all changed nothing (`../mirror_probe/`). Encoding each masked image's mirror once (cached, 55
encodes at 10% masks) gives the map head a real second view of every mask. Everything else is `adasam train` as
shipped, with the same random draws: only the inputs and targets of the mirrored samples differ. Run from the
repository root with `adasam train`'s arguments:

    python benchmarks/results/true_mirror_probe/train_with_mirrored_images.py --data ../shared/datasets/busi \
        --out RUN --masks 0.1 --seed S --method adasam --tags all
"""
import sys

import numpy as np
import torch

import model.train as train
from model.cache import model_inputs
from model.dataset import load_data_folder
from model.preprocess import preprocess_mask, read_image

_init, _share, _embeddings, _target = (train.Trainer.__init__, train.Trainer._share, train.Trainer._embeddings,
                                       train.Trainer._target)


def _init_with_mirrors(self, model, config, data, out, *args, **kwargs):
    _init(self, model, config, data, out, *args, **kwargs)
    folder = load_data_folder(sys.argv[sys.argv.index("--data") + 1])
    paths = {s.id: s.image_path for s in folder.samples}
    mirrored = [np.ascontiguousarray(np.flip(read_image(paths[i.id]), axis=1)) for i in data.masked]
    embedded = model_inputs(model.backbone, 0).get_many(mirrored, description="mirrored masked images")
    self.mirrors = {i.id: (embedding, preprocess_mask(np.ascontiguousarray(np.fliplr(i.mask)), self.size))
                    for i, (embedding, _) in zip(data.masked, embedded)}
    self.mirror_batch, self.mirror_ids = None, set()


def _share_recording(self, batch, *aligned):
    """The map head's batch is the only one shared with a boolean array (the mirror draw): remember which of its
    images were drawn mirrored, and let the shipped code flip nothing (the mirrored inputs come from the cache)."""
    draw = next((a for a in aligned if isinstance(a, np.ndarray) and a.dtype == bool), None)
    if draw is None:
        return _share(self, batch, *aligned)
    shared_batch, shared_draw, *rest = _share(self, batch, draw)
    self.mirror_batch = shared_batch
    self.mirror_ids = {item.id for item, m in zip(shared_batch, shared_draw) if m}
    return (shared_batch, np.zeros_like(shared_draw), *rest)


def _swap(self, items, original, mirrored):
    if items is not self.mirror_batch or not self.mirror_ids:
        return original
    rows = [mirrored(i) if i.id in self.mirror_ids else row for i, row in zip(items, original)]
    return torch.stack([r.to(original.device, original.dtype) for r in rows])


def _embeddings_mirrored(self, items):
    return _swap(self, items, _embeddings(self, items), lambda i: self.mirrors[i.id][0])


def _target_mirrored(self, items, size):
    return _swap(self, items, _target(self, items, size), lambda i: self.mirrors[i.id][1])


train.Trainer.__init__ = _init_with_mirrors
train.Trainer._share = _share_recording
train.Trainer._embeddings = _embeddings_mirrored
train.Trainer._target = _target_mirrored

if __name__ == "__main__":
    from app.cli import main

    sys.exit(main(sys.argv[1:]))
