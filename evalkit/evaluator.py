"""LongPPL's key tokens chosen by another checkpoint (``--evaluator``), as in the paper.

The evaluator scores the same windows as the run (same corpus, seed, lengths: the same offsets),
full and short context, in a perplexity run of its own beside the run's folder
(``<run>-evaluator``; resumed with it). Key tokens are positions, so the evaluator must read the
same tokens: a checkpoint whose tokenizer differs is refused before anything runs. (Belongs with
``evaluate`` in ``evalkit/run/``.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from evalkit.errors import ConfigError


def evaluator_folder(folder: Path) -> Path:
    return folder.with_name(folder.name + "-evaluator")


def run_evaluator(config, loaded, folder: Path, console, log):
    """The evaluator's rows (``token_nll`` and ``short_nll``) for the run's windows."""
    from evalkit.data.corpus import tokenizer_fingerprint
    from evalkit.evaluate import RunConfig, evaluate, load_for

    path = config.task_options["evaluator"]
    other = load_for(dataclasses.replace(config, model=path), log)
    if tokenizer_fingerprint(other.tokenizer) != tokenizer_fingerprint(loaded.tokenizer):
        raise ConfigError(
            f"--evaluator {path} has another tokenizer than {config.model}: key tokens are positions of one token stream",
            "give an evaluator that shares the model's tokenizer, or drop --evaluator to let the model choose",
        )
    sub = RunConfig(
        task=config.task,
        model=path,
        task_options={**config.task_options, "evaluator": None},
        out=str(evaluator_folder(folder)),
        resume=config.resume,
        device=config.device,
        dtype=config.dtype,
        batch_tokens=config.batch_tokens,
        seed=config.seed,
        allow_extrapolation=config.allow_extrapolation,
        allow_pickle=config.allow_pickle,
        trust_remote_code=config.trust_remote_code,
        quiet=config.quiet,
        plots=False,
    )
    outcome = evaluate(sub, console=console, loaded=other)
    if outcome.interrupted:
        raise KeyboardInterrupt  # the key tokens need every evaluator window; a resume continues it
    frame = outcome.frame
    return frame[frame.metric.isin(["token_nll", "short_nll"])]
