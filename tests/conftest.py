"""Shared fixtures: tiny random Llama models with a real (trained-in-test) tokenizer.

No hub, no downloads: the tokenizer is a small byte-level BPE trained on the built-in corpus,
the model a 2-layer Llama with GQA. Both are saved like any Hugging Face checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["EVALKIT_CACHE"] = str(tmp_path_factory.mktemp("evalkit-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield


def make_tokenizer(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from evalkit.data.corpus import load_corpus

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(load_corpus().documents[:20], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def make_llama(vocab_size: int, seed: int = 0, max_positions: int = 512, **overrides):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    settings = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=0,
        tie_word_embeddings=False,
    )
    config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=max_positions, **{**settings, **overrides})
    return LlamaForCausalLM(config).eval()


def make_llama4(vocab_size: int, seed: int = 0, max_positions: int = 256, temperature: bool = True):
    """A tiny random Llama 4 text model: one RoPE and one NoPE layer, dense MLPs, temperature tuning
    (floor_scale 4, attn_scale 0.5) so its native scaling differs from 1 within a few tokens."""
    import torch
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    torch.manual_seed(seed)
    config = Llama4TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=64,
        intermediate_size_mlp=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=2,
        num_experts_per_tok=1,
        moe_layers=[],
        no_rope_layers=[1, 0],
        attention_chunk_size=None,
        max_position_embeddings=max_positions,
        attn_temperature_tuning=temperature,
        floor_scale=4,
        attn_scale=0.5,
        pad_token_id=0,
        eos_token_id=0,
        bos_token_id=0,
    )
    return Llama4ForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory):
    """SmolLM2-135M-Instruct's real tokenizer from the files shipped in tests/data/smollm2_tokenizer (Apache-2.0):
    tests that compare against prompts other code made with it run offline, without the model cache."""
    import gzip
    import shutil

    from transformers import AutoTokenizer

    shipped = Path(__file__).parent / "data" / "smollm2_tokenizer"
    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    with gzip.open(shipped / "tokenizer.json.gz", "rb") as f:  # gzipped: 0.6 MB in the repository, not 3.5 MB
        (folder / "tokenizer.json").write_bytes(f.read())
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(shipped / name, folder / name)
    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama + tokenizer saved as a safetensors checkpoint folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = make_llama(len(tokenizer))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
