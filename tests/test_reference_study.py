"""Position schemes of the reference models and the reference study, end to end on tiny settings."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from evalkit.core.errors import ConfigError, ResultsError
from evalkit.reference import RECIPES, build_pair
from evalkit.reference import train as train_module
from evalkit.reference.study import run_study
from evalkit.reference.study_layout import StudySettings, pair_folder, run_folder
from evalkit.report import stats

TINY = RECIPES["cpu"].replace(
    name="tiny",
    layers=2,
    width=16,
    heads=2,
    mlp_ratio=2,
    train_length=16,
    batch=4,
    steps=2,
    warmup=1,
    eval_sequences=8,
    digits=2,
    threads=1,
)
SETTINGS = StudySettings(
    positions=("irope",),
    seeds=(0, 1),
    recipe="tiny",
    needle_trials=2,
    focus_trials=1,
    perplexity_samples=2,
    depths="0,100",
    factors=(1, 2),
)


def _model(positions: str, **changes):
    return build_pair(TINY.replace(positions=positions, **changes), seed=0)


def test_nope_layers_apply_no_rotary_embedding():
    """All-NoPE: logits do not depend on position ids at all (shifted or stretched); RoPE's do."""
    ids = torch.randint(3, 60, (2, 12))
    base = torch.arange(12).expand(2, 12)
    for positions in ("nope", "rope"):
        for model in _model(positions, init_std=0.5).values():  # large weights: RoPE visibly matters
            model.eval()
            with torch.no_grad():
                logits = model(input_ids=ids, position_ids=base).logits
                shifted = model(input_ids=ids, position_ids=base + 37).logits
                stretched = model(input_ids=ids, position_ids=base * 5).logits
            torch.testing.assert_close(
                shifted, logits, atol=1e-3, rtol=1e-4
            )  # RoPE is relative: a shift changes nothing either
            if positions == "nope":
                torch.testing.assert_close(stretched, logits, atol=1e-6, rtol=0)
                assert not any(layer.self_attn.use_rope for layer in model.model.layers)
            else:
                assert (stretched - logits).abs().max() > 1e-3


def _naive_local_layer(attn, hidden, position_embeddings, window: int):
    """Layer 0's attention by hand: RoPE on q and k, causal mask cut to the last ``window`` keys."""
    from transformers.models.smollm3.modeling_smollm3 import apply_rotary_pos_emb

    b, t, _ = hidden.shape
    heads, d = attn.config.num_attention_heads, attn.head_dim
    q = attn.q_proj(hidden).view(b, t, heads, d).transpose(1, 2)
    k = attn.k_proj(hidden).view(b, t, heads, d).transpose(1, 2)
    v = attn.v_proj(hidden).view(b, t, heads, d).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    scores = scores.masked_fill(~((j <= i) & (j > i - window)), float("-inf"))
    out = torch.softmax(scores, -1) @ v
    return attn.o_proj(out.transpose(1, 2).reshape(b, t, heads * d))


@pytest.mark.parametrize("variant", ["softmax", "ssmax"])
def test_local_layers_never_attend_beyond_their_window(variant):
    window = 5
    model = _model("irope", window=window)[variant].eval()
    assert [layer.self_attn.use_rope for layer in model.model.layers] == [1, 0]
    assert (
        model.model.layers[0].self_attn.sliding_window == window
        and model.model.layers[1].self_attn.sliding_window is None
    )
    if variant == "ssmax":  # SSMax on the global NoPE layer only
        assert model.config.evalkit_attention["layer_indices"] == [1]
    captured = {}
    attn = model.model.layers[0].self_attn
    hook_in = attn.register_forward_pre_hook(
        lambda m, args, kwargs: captured.update(x=kwargs["hidden_states"], pe=kwargs["position_embeddings"]),
        with_kwargs=True,
    )
    hook_out = attn.register_forward_hook(lambda m, args, out: captured.update(y=out[0]))
    ids = torch.randint(3, 60, (2, 20))
    with torch.no_grad():
        model(input_ids=ids)
        expected = _naive_local_layer(attn, captured["x"], captured["pe"], window)
        torch.testing.assert_close(captured["y"], expected, atol=1e-5, rtol=1e-4)
        # and directly: a change at token 0 reaches the local layer's output only within the window
        first = captured["y"].clone()
        changed = ids.clone()
        changed[:, 0] = (changed[:, 0] + 1 - 3) % 57 + 3
        model(input_ids=changed)
    moved = (captured["y"] - first).abs().amax(dim=(0, 2))  # (T,)
    assert (moved[:window] > 1e-6).all() and (moved[window:] == 0).all()
    hook_in.remove()
    hook_out.remove()


def test_irope_checkpoint_loads_with_its_positions_and_attention(tmp_path):
    from evalkit.models.loading import load_model

    summary = train_module.train_reference_pair(
        tmp_path, recipe=TINY, positions="irope", window=4, seed=0, device="cpu", progress=False, log=lambda _: None
    )
    assert summary["positions"] == "irope"
    loaded = load_model(str(tmp_path / "ssmax"), log=lambda *_: None)
    model = loaded.model
    assert type(model).__name__ == "SmolLM3ForCausalLM" and loaded.training_length == 16
    assert [layer.self_attn.sliding_window for layer in model.model.layers] == [4, None]
    assert [layer.self_attn.evalkit_variant for layer in model.model.layers] == ["softmax", "ssmax"]
    from evalkit.attention import head_tables

    saved = summary["ssmax_s"]["per_layer_head"]
    torch.testing.assert_close(head_tables(model)["s"], torch.tensor(saved), atol=1e-6, rtol=0)


def test_bad_positions_are_config_errors():
    with pytest.raises(ConfigError, match="positions"):
        TINY.replace(positions="alibi")
    with pytest.raises(ConfigError, match="window"):
        TINY.replace(positions="irope", window=17)
    with pytest.raises(ConfigError, match="pattern"):
        TINY.replace(positions="irope", pattern="gg")
    with pytest.raises(ConfigError, match="positions"):
        StudySettings(positions=("rope", "xpe")).check()


def test_study_end_to_end_then_resume(tmp_path, monkeypatch):
    monkeypatch.setitem(train_module.RECIPES, "tiny", TINY)
    out = tmp_path / "study"
    report = run_study(out, SETTINGS, device="cpu", log=lambda *_: None)
    text = report.read_text()
    for heading in (
        "## Training",
        "## Needle accuracy vs length",
        "### Effective context length",
        "## Loss by position beyond the training length",
        "## SSMax - softmax, paired prompt by prompt",
    ):
        assert heading in text
    assert "compare learning, not length generalization" in text  # 2 steps learn nothing
    for name in ("needle_accuracy", "needle_mass", "entropy_norm", "loss_by_position"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000

    # the accuracy table is the mean over seeds and prompts with the (seed, trial)-clustered Wilson interval
    frames = []
    for seed in (0, 1):
        f = pd.read_parquet(run_folder(out, "irope", seed, "ssmax", "needle") / "results.parquet")
        frames.append(f.assign(train_seed=seed))
    rows = pd.concat(frames)
    rows = rows[(rows.metric == "greedy_correct") & (rows.context_length == 32)]
    table = pd.read_csv(out / "tables" / "needle_accuracy.csv")
    got = table[(table.positions == "irope") & (table.variant == "ssmax") & (table.context_length == 32)].iloc[0]
    expected = stats.proportion(rows.value, stats.unit_keys(rows, ["train_seed", "trial"]))
    assert got.value == pytest.approx(rows.value.mean()) and got.n == len(rows) == 2 * 2 * 2
    assert got.ci_low == pytest.approx(expected.ci_low) and got.ci_high == pytest.approx(expected.ci_high)
    # every model answered the same prompts
    prompts = [
        pd.read_parquet(run_folder(out, p, s, v, "needle") / "results.parquet")[["answer", "needle_start"]]
        for p in ("irope",)
        for s in (0, 1)
        for v in ("softmax", "ssmax")
    ]
    assert all(p.reset_index(drop=True).equals(prompts[0].reset_index(drop=True)) for p in prompts)

    # interrupt: one pair's training never finished, one run stopped early
    kept = pair_folder(out, "irope", 0) / "softmax" / "model.safetensors"
    kept_time = kept.stat().st_mtime_ns
    (pair_folder(out, "irope", 1) / "summary.json").unlink()
    manifest_path = run_folder(out, "irope", 0, "ssmax", "focus") / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(interrupted=True, finished_samples=1)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ResultsError, match="--resume"):
        run_study(out, SETTINGS, device="cpu", log=lambda *_: None)
    logs = []
    run_study(out, SETTINGS, device="cpu", resume=True, log=logs.append)
    assert kept.stat().st_mtime_ns == kept_time  # finished pairs are reused
    assert any("training irope pair, seed 1" in line for line in logs)
    assert sum(line.startswith(("needle:", "focus:", "perplexity:")) for line in logs) == 1  # only the interrupted run
    assert not json.loads(manifest_path.read_text())["interrupted"]
    assert np.isclose(
        pd.read_csv(out / "tables" / "needle_accuracy.csv").value, table.value
    ).all()  # same seeds: same numbers


def test_study_settings_must_match_the_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(train_module.RECIPES, "tiny", TINY)
    out = tmp_path / "s"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({**json.loads(json.dumps(SETTINGS.__dict__)), "needle_trials": 7}))
    with pytest.raises(ConfigError, match="needle_trials"):
        run_study(out, SETTINGS, device="cpu", log=lambda *_: None)
