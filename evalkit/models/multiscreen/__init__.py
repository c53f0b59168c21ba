"""Multiscreen: screening-tile language models (arXiv 2604.01178) in plain PyTorch.

``load_checkpoint(folder, device, dtype)`` returns the module evalkit's torch backend runs:
``forward(input_ids (B, T)) -> logits (B, T, V)``, ``max_positions`` (None: no position table),
``training_length`` and ``tokenizer``. ``save_checkpoint(model, folder, tokenizer)`` writes
``config.json`` + ``model.safetensors`` (+ the tokenizer's files). Submodules: ``config`` (the
hyperparameters), ``screen`` (the screening computation, banded and chunked), ``model`` (the
module), ``checkpoint`` (folders, and the community port's format), ``probe`` (focus).
"""

from evalkit.models.multiscreen.checkpoint import is_multiscreen, load_checkpoint, save_checkpoint
from evalkit.models.multiscreen.config import MODEL_TYPE, MultiscreenConfig
from evalkit.models.multiscreen.model import Multiscreen

__all__ = ["MODEL_TYPE", "Multiscreen", "MultiscreenConfig", "is_multiscreen", "load_checkpoint", "save_checkpoint"]
