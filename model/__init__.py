"""ADA-SAM: backbones, classifier, CAM prompts, losses, training, inference, uncertainty."""
from model.device import keep_freed_memory

keep_freed_memory()  # every process that runs the model: large tensors reuse freed memory (see its docstring)
