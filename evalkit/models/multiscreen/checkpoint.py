"""Multiscreen checkpoint folders: ``config.json`` + ``model.safetensors`` (+ tokenizer files).

evalkit's own layout: ``config.json`` is ``MultiscreenConfig.to_json()`` (``model_type``
"multiscreen", every hyperparameter, the training length and the tiles at w = infinity), the
tensors are the module's ``state_dict`` in safetensors. A tokenizer saved beside them with
``save_pretrained`` (``tokenizer.json``; the reference study's character tokenizer) is loaded
with ``AutoTokenizer`` and set as ``module.tokenizer``.

The community transformers port (github.com/kuroganegames/Multiscreen-HF, ``model_type``
"multiscreen" too, read for its format only, none of its code is used) saves the same
parameters under other names; ``PORT_NAMES`` maps them, so its folders load here as well:
``hidden_size``/``num_hidden_layers``/``num_attention_heads``/``key_dim``/``value_dim``/
``mipe_threshold`` give the sizes and ``max_position_embeddings`` is taken as the training
length. Two differences remain, both said when loading: the port never switches long windows
to w = infinity (evalkit applies the paper's rule), and its default MiPE position mode wraps
positions at or past ``max_position_embeddings`` modulo w (evalkit uses the paper's absolute
positions), so logits agree up to the training length and follow the paper beyond it.
Pickled weights (``pytorch_model.bin``) are refused: loading them runs code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evalkit.core.errors import ConfigError
from evalkit.models.multiscreen.config import MODEL_TYPE, MultiscreenConfig

WEIGHTS = "model.safetensors"

# port name (after an optional "multiscreen." prefix) -> evalkit name
PORT_NAMES: tuple[tuple[str, str], ...] = (
    (r"embed\.weight", "embed"),
    (r"s_E", "s_e"),
    (r"s_F", "s_f"),
    (r"layers\.(\d+)\.block\.(q|k|v|g|o)_proj\.weight", r"layers.\1.\2.weight"),
    (r"layers\.(\d+)\.block\.sw", r"layers.\1.s_w"),
    (r"layers\.(\d+)\.block\.sr", r"layers.\1.s_r"),
    (r"layers\.(\d+)\.block\.sO", r"layers.\1.s_o"),
)


def is_multiscreen(folder: str | Path) -> bool:
    path = Path(folder) / "config.json"
    try:
        return path.is_file() and json.loads(path.read_text()).get("model_type") == MODEL_TYPE
    except (OSError, json.JSONDecodeError):
        return False


def save_checkpoint(model, folder: str | Path, tokenizer: Any = None, freeze: bool = True) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (and the tokenizer's files) to ``folder``.

    ``freeze``: record the inference rule first (tiles whose learned window exceeds the training
    length go to w = infinity), unless the config already records it.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if freeze and model.config.infinite_tiles is None:
        model.freeze_windows()
    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt", "model_type": MODEL_TYPE})
    model.config.write(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def load_checkpoint(folder: str | Path, device: Any = "cpu", dtype: Any = None, log: Callable[[str], Any] = print):
    """The module of a Multiscreen folder (evalkit's layout or the port's), in eval mode, on ``device``."""
    import torch
    from safetensors.torch import load_file

    from evalkit.models.multiscreen.model import Multiscreen

    folder = Path(folder)
    config_path, weights_path = folder / "config.json", folder / WEIGHTS
    if not config_path.is_file():
        raise ConfigError(f"{folder} has no config.json", "give a Multiscreen checkpoint folder")
    if not weights_path.is_file():
        found = "pickled weights (pytorch_model.bin), which evalkit does not load" if any(folder.glob("*.bin")) else ""
        raise ConfigError(
            f"{folder} has no {WEIGHTS}" + (f" but {found}" if found else ""),
            "save the weights with safetensors (save_checkpoint, or save_pretrained(safe_serialization=True))",
        )
    record = json.loads(config_path.read_text())
    tensors = load_file(str(weights_path))
    if "width" in record:
        config = MultiscreenConfig.from_json(record, str(config_path))
    else:
        config, tensors = _from_port(record, tensors, str(config_path), log)
    model = Multiscreen(config)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{weights_path} does not match its config.json (missing {sorted(missing)[:4]}, "
            f"unexpected {sorted(unexpected)[:4]})",
            "save config and weights together",
        )
    if config.infinite_tiles is None:
        model.freeze_windows()
    model = model.to(device=torch.device(device) if isinstance(device, str) else device)
    if model.embed.device.type == "cuda":
        model.set_score_budget(1 << 27)  # 256 MiB of bf16 scores per chunk: few, large kernels
    if dtype is not None:
        model = model.to(dtype=dtype)
    model.tokenizer = _tokenizer(folder)
    return model.eval()


def _tokenizer(folder: Path):
    """The folder's tokenizer: ``tokenizer.json`` directly (AutoTokenizer would read config.json and
    warn about a model type transformers does not know), else whatever AutoTokenizer finds."""
    if (folder / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    if not (folder / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _from_port(record: dict, tensors: dict, where: str, log) -> tuple[MultiscreenConfig, dict]:
    """The community port's config and tensor names in evalkit's terms."""
    try:
        config = MultiscreenConfig(
            vocab_size=int(record["vocab_size"]),
            width=int(record.get("hidden_size", record.get("hidden_dim"))),
            layers=int(record.get("num_hidden_layers", record.get("num_layers"))),
            tiles=int(record.get("num_attention_heads", record.get("num_heads"))),
            key_dim=int(record.get("key_dim", 16)),
            value_dim=int(record.get("value_dim", 64)),
            mipe_threshold=float(record.get("mipe_threshold", 256.0)),
            training_length=int(record.get("max_position_embeddings", record.get("max_seq_len"))),
            init_scale=float(record.get("initializer_range", 0.1)),
            eos_token_id=record.get("eos_token_id"),
            pad_token_id=record.get("pad_token_id"),
            source="multiscreen-hf",
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{where} is a Multiscreen config evalkit cannot read ({err})", "check its sizes") from None
    renamed = {}
    for name, tensor in tensors.items():
        bare = name.removeprefix("module.").removeprefix("multiscreen.")
        if bare == "lm_head.weight":
            continue  # the port's head is the normalized embedding; a stored copy carries nothing more
        for pattern, target in PORT_NAMES:
            if re.fullmatch(pattern, bare):
                renamed[re.sub(pattern, target, bare)] = tensor
                break
        else:
            renamed[name] = tensor  # reported as unexpected by the caller
    if record.get("mipe_position_mode") != "paper_absolute":
        log(
            f"note: {where} uses the port's MiPE position wrap past {config.training_length} tokens; "
            "evalkit uses the paper's absolute positions, so logits past that length follow the paper"
        )
    return config, renamed
