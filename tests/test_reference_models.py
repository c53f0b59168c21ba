"""The reference pair: data, tokenizer, a few training steps, the saved checkpoints."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from evalkit.core.errors import ConfigError
from evalkit.reference import RECIPES, abc_batch, build_pair, get_recipe, make_char_tokenizer, train_reference_pair
from evalkit.reference.data import KEYS

TINY = RECIPES["cpu"].replace(
    name="tiny",
    layers=1,
    width=32,
    heads=2,
    train_length=32,
    batch=8,
    steps=8,
    warmup=2,
    lr=3e-3,
    eval_sequences=16,
    threads=1,
    digits=5,
    weight_decay=0.1,
    ssmax_s=None,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    summary = train_reference_pair(out, recipe=TINY, seed=3, device="cpu", progress=False, log=lambda _: None)
    return out, summary


def test_char_tokenizer_one_token_per_character_and_round_trip():
    tok = make_char_tokenizer()
    text = "\n\nA=12345\nZ=90817\nQ= ~x"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok("A=1")["input_ids"] == tok("A=1", add_special_tokens=False)["input_ids"]  # no BOS added
    assert tok.eos_token_id == tok.pad_token_id == 0 and tok.bos_token_id is None


def test_data_recall_mask_covers_only_digits_of_repeated_keys():
    tok = make_char_tokenizer()
    batch = abc_batch(np.random.default_rng(0), 16, 96, 4)
    assert batch.tokens.shape == (16, 97) and batch.recall_mask.any()
    for row, mask, mapping in zip(batch.tokens, batch.recall_mask, batch.mappings):
        text = tok.decode(row.tolist())
        assert len(text) == 97
        assert len(set(mapping.values())) == 26 and all(re.fullmatch(r"[1-9]\d{3}", v) for v in mapping.values())
        seen, expected, at = set(), np.zeros(len(text), bool), 0
        for line in text.split("\n"):
            if line:
                key, _, value = line.partition("=")
                assert key in KEYS and mapping[key].startswith(value)  # value fixed per key (last line may be cut)
                if key in seen:
                    expected[at + 2 : at + len(line)] = True
                seen.add(key)
            at += len(line) + 1
        np.testing.assert_array_equal(mask, expected)
        assert all(text[i].isdigit() for i in np.flatnonzero(mask))


def test_training_format_matches_the_abcdigits_needle():
    """The needle task's prompts, tokenized with the reference tokenizer, are training-format lines."""
    from evalkit.data.haystack import HaystackOptions, build_samples

    tok = make_char_tokenizer()
    options = HaystackOptions(needle="abcdigits", digits=5, chat="off")
    for sample in build_samples(tok, options, [64, 200], [0, 50, 100], 2, seed=0):
        text = tok.decode(sample.prompt_ids.tolist())
        assert len(text) == sample.context_length
        *lines, query = text.split("\n")
        assert all(line == "" or re.fullmatch(r"[A-Z]=[1-9]\d{4}", line) for line in lines)
        assert re.fullmatch(r"[A-Z]=", query) and re.fullmatch(r"\d{5}", tok.decode(sample.answer_ids.tolist()))


def test_pair_starts_identical_and_same_seed_gives_same_weights():
    pair = build_pair(TINY, seed=5)
    soft, ss = (m.state_dict() for m in (pair["softmax"], pair["ssmax"]))
    assert set(ss) - set(soft) == {"model.layers.0.self_attn.ssmax_s"}
    assert all(torch.equal(soft[k], ss[k]) for k in soft)
    again = build_pair(TINY, seed=5)["softmax"].state_dict()
    other = build_pair(TINY, seed=6)["softmax"].state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(soft[key], again[key]) and not torch.equal(soft[key], other[key])


def test_training_moves_ssmax_scales_and_lowers_loss(trained):
    import pandas as pd

    out, summary = trained
    log = pd.read_csv(out / "training_log.csv")
    assert list(log.columns[:5]) == ["step", "variant", "loss", "recall_loss", "lr"]
    assert len(log) == 2 * TINY.steps
    for variant in ("softmax", "ssmax"):
        part = log[log.variant == variant].sort_values("step")
        assert part.recall_loss.iloc[-2:].mean() < part.recall_loss.iloc[:2].mean() - 0.3
    scales = np.asarray(summary["ssmax_s"]["per_layer_head"])
    assert scales.shape == (1, 2) and not np.allclose(scales, TINY.initial_s)
    assert (out / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert summary["recipe"] == "tiny" and set(summary["variants"]) == {"softmax", "ssmax"}
    assert summary["variants"]["softmax"]["learned_lookup"] is False  # 8 steps teach no lookup, and the summary says so


def test_saved_pair_reloads_with_its_variants(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evalkit.attention import spec_from_model
    from evalkit.models.loading import LoadOptions, load_model

    out, summary = trained
    soft = load_model(str(out / "softmax"), LoadOptions(device="cpu"), log=lambda _: None)
    ss = load_model(str(out / "ssmax"), LoadOptions(device="cpu"), log=lambda _: None)
    assert spec_from_model(soft.model).variant == "softmax"
    assert spec_from_model(ss.model).variant == "ssmax"
    assert soft.max_positions == 16 * TINY.train_length
    loaded = ss.model.model.layers[0].self_attn.ssmax_s.detach()
    assert torch.equal(loaded, torch.tensor(summary["ssmax_s"]["per_layer_head"][0]))
    assert torch.equal(loaded, load_file(out / "ssmax" / "model.safetensors")["model.layers.0.self_attn.ssmax_s"])
    # plain transformers loads both folders too (SSMax tensors dropped, as the convention says)
    AutoModelForCausalLM.from_pretrained(out / "softmax")
    assert (
        AutoTokenizer.from_pretrained(out / "ssmax")("B=7", add_special_tokens=False)["input_ids"]
        == make_char_tokenizer()("B=7", add_special_tokens=False)["input_ids"]
    )


def test_same_seed_same_trained_weights(trained, tmp_path):
    out, _ = trained
    train_reference_pair(tmp_path, recipe=TINY, seed=3, device="cpu", progress=False, log=lambda _: None)
    for variant in ("softmax", "ssmax"):
        a, b = (load_file(d / variant / "model.safetensors") for d in (out, tmp_path))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_errors():
    with pytest.raises(ConfigError, match="did you mean 'cpu'"):
        get_recipe("cpuu")
    with pytest.raises(ConfigError, match="unknown recipe fields"):
        TINY.replace(layer=2)
    with pytest.raises(ConfigError, match="heads"):
        TINY.replace(width=30, heads=4)
    assert RECIPES["gpu"].max_positions == 16 * 256 and RECIPES["cpu"].replace(steps=3).steps == 3
