"""The training integrations: ``EvalkitCallback`` inside a real ``transformers.Trainer`` on CPU (runs
at the right steps, numbers in TensorBoard's event files under evalkit/<task>/<metric>@<length>),
and ``TrainingEvaluator`` in a plain loop."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from evalkit.core.errors import ConfigError
from evalkit.integrations import EvalkitCallback, TrainingEvaluator, headline_metrics
from tests.conftest import make_llama

NEEDLE = {"lengths": "128", "depths": "0,100", "trials": 1}


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, vocab: int, count: int = 16, length: int = 32):
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocab, (count, length), generator=generator)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_callback_in_trainer_logs_to_tensorboard(tmp_path, tokenizer):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import Trainer, TrainingArguments

    model = make_llama(len(tokenizer), seed=5)
    args = TrainingArguments(
        output_dir=str(tmp_path / "train"),
        max_steps=4,
        per_device_train_batch_size=4,
        logging_steps=1,
        report_to=["tensorboard"],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        learning_rate=1e-3,
    )
    callback = EvalkitCallback(tasks=["needle"], every=2, **NEEDLE)
    trainer = Trainer(
        model=model, args=args, train_dataset=_Tokens(len(tokenizer)), processing_class=tokenizer, callbacks=[callback]
    )
    trainer.train()

    runs = tmp_path / "train" / "evalkit" / "model"
    assert sorted(p.name for p in runs.iterdir()) == ["step-2", "step-4"]
    for step in (2, 4):
        manifest = json.loads((runs / f"step-{step}" / "needle" / "manifest.json").read_text())
        assert manifest["step"] == step and manifest["model"]["kind"] == "memory" and not manifest["interrupted"]
    assert model.training  # handed back to the Trainer as it was
    logged = [h for h in trainer.state.log_history if "evalkit/needle/accuracy@128" in h]
    assert [h["step"] for h in logged] == [2, 4]
    assert all(h["evalkit/needle/seconds"] > 0 for h in logged)

    events = [p for p in (tmp_path / "train").rglob("events.out.tfevents.*")]
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    # the Trainer's TensorBoard logger prefixes every non-eval key with train/, the loss's too
    assert "train/loss" in tags
    for name in (
        "evalkit/needle/accuracy@128",
        "evalkit/needle/answer_logprob@128",
        "evalkit/needle/effective_length",
        "evalkit/needle/seconds",
    ):
        assert f"train/{name}" in tags
    accuracy = accumulator.Scalars("train/evalkit/needle/answer_logprob@128")
    assert [e.step for e in accuracy] == [2, 4]
    summary = pd.read_csv(runs / "step-4" / "needle" / "summary.csv")
    assert accuracy[-1].value == pytest.approx(
        float(summary.answer_logprob.iloc[0]), rel=1e-6
    )  # float32 in the event file


def test_plain_loop_helper(tmp_path, tokenizer):
    model = make_llama(len(tokenizer), seed=6)
    logged = []
    evaluator = TrainingEvaluator(
        tasks=["needle", "perplexity"],
        every=2,
        out=tmp_path / "runs",
        lengths="128",
        task_options={"needle": {"depths": "50", "trials": 1}},
        log=lambda m, s: logged.append((s, m)),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    model.train()
    for step in range(1, 5):
        loss = model(input_ids=torch.arange(1, 33).unsqueeze(0), labels=torch.arange(1, 33).unsqueeze(0)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        evaluator.maybe_evaluate(model, tokenizer, step)
    assert [s for s, _ in logged] == [2, 4]
    names = set(logged[0][1])
    assert {
        "evalkit/needle/accuracy@128",
        "evalkit/perplexity/perplexity@128",
        "evalkit/needle/seconds",
        "evalkit/perplexity/seconds",
    } <= names
    summary = pd.read_csv(tmp_path / "runs" / "model" / "step-4" / "perplexity" / "summary.csv")
    assert logged[1][1]["evalkit/perplexity/perplexity@128"] == pytest.approx(float(summary.perplexity.iloc[0]))
    assert (
        logged[0][1]["evalkit/perplexity/perplexity@128"] != logged[1][1]["evalkit/perplexity/perplexity@128"]
    )  # trained
    again = evaluator.evaluate(model, tokenizer, 4)  # a step evaluated before is read back, not rerun
    assert again["evalkit/perplexity/perplexity@128"] == logged[1][1]["evalkit/perplexity/perplexity@128"]


def test_options_checked_before_training():
    with pytest.raises(ConfigError, match="takes the option 'trails'"):
        TrainingEvaluator(tasks=["needle"], trails=2)
    with pytest.raises(ConfigError, match="banana"):
        EvalkitCallback(tasks=["needle"], lengths="banana")
    with pytest.raises(ConfigError, match="every"):
        EvalkitCallback(tasks=["needle"], every=0)


def test_headline_names_with_several_variants():
    summary = pd.DataFrame(
        {
            "attention": ["softmax", "softmax", "ssmax", "ssmax"],
            "context_length": [64, "all", 64, "all"],
            "accuracy": [0.5, 0.5, 1.0, 1.0],
            "accuracy_ci_low": [0.1, 0.1, 0.6, 0.6],
            "accuracy_ci_high": [0.9, 0.9, 1.0, 1.0],
            "threshold": [None, 0.856, None, 0.856],
            "effective_length": [None, None, None, 64],
            "effective_length_ci_low": [None] * 4,
            "effective_length_ci_high": [None, None, None, 64],
        }
    )
    assert headline_metrics(summary, "needle") == {
        "softmax/accuracy@64": 0.5,
        "softmax/effective_length": 0.0,
        "softmax/effective_length_ci_low": 0.0,
        "softmax/effective_length_ci_high": 0.0,
        "ssmax/accuracy@64": 1.0,
        "ssmax/effective_length": 64.0,
        "ssmax/effective_length_ci_low": 0.0,
        "ssmax/effective_length_ci_high": 64.0,
    }
    assert headline_metrics(summary, "needle", bounds=True)["ssmax/accuracy_ci_low@64"] == 0.6
