"""What every probe here starts from: the repo importable, 1 torch thread, a model.pt and BUSI val images as items."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

torch.set_num_threads(1)


def model_and_val(model_path: str, count: int | None = None, with_images: bool = True):
    """(the model in eval mode, the first `count` BUSI val images as evaluate.Item, all when None)."""
    from model.adasam import load_checkpoint
    from model.backbones import backbone_view, build_backbone
    from model.cache import DEFAULT_CACHE_DIR, model_inputs
    from model.dataset import load_data_folder, load_items

    base = build_backbone("litemedsam")
    folder = load_data_folder(ROOT.parent / "shared" / "datasets" / "busi")
    items = load_items(folder.split("val")[:count], model_inputs(base, 0, DEFAULT_CACHE_DIR), with_images=with_images)
    model, _ = load_checkpoint(model_path, backbone_view(base))
    return model.eval(), items
