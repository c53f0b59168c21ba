"""`evalkit bench queries`: many queries on one haystack, branched off one trunk cache vs one pass each.

ABCDigits over all keys: one haystack holding all 26 KEY=DIGITS lines, each key asked once. Four
contenders take turns in every round (``evalkit.bench.perplexity.run_rounds``, median over rounds, fair under a
drifting load):

- branch score: the 26 answers teacher-forced, the haystack's cache computed once, the 26 suffixes
  in one packed call (``TransformersBackend.answer_branched``);
- independent score: one query per call, each a whole forward pass (``score_answers``), as a
  harness without a shared cache runs them;
- branch generate: greedy decoding of the 26 answers, batched on the trunk cache with per-row stop;
- generate loop: a plain transformers ``generate`` per query.

A one-query call is timed and counted 26 times: every query costs the same (the prompts differ by
at most a token), and timing one per turn keeps the rounds short enough to interleave on a CPU.
"""

from __future__ import annotations

import numpy as np

from evalkit.bench.timing import ROUNDS, Mode, run_rounds, write_table

TIMING = "median of {} rounds, all four contenders taking turns in each; one-query contenders x queries"


def bench_queries(
    model: str,
    length: int,
    device: str,
    dtype: str,
    batch_tokens: int | None,
    out: str | None,
    seconds: float = 0.0,
    rounds: int | None = None,
    seed: int = 1234,
):
    """Table (one row per contender) of seconds for all queries, queries/s, forward tokens computed,
    speedup over the one-pass-per-query baseline of its kind, and the greedy verdicts' agreement."""
    import torch

    from evalkit.backends.transformers import TransformersBackend
    from evalkit.core.requests import AnswerScoreRequest, GenerateRequest
    from evalkit.data.haystack import abcdigits_all_keys
    from evalkit.models import prefix_cost
    from evalkit.models.branch import trunk_length
    from evalkit.models.loading import LoadOptions, load_model
    from evalkit.models.prefix import shared_sequence

    loaded = load_model(model, LoadOptions(device=device, dtype=dtype), log=print)
    adapter = TransformersBackend(loaded)
    budget = batch_tokens or adapter.batch_tokens()
    samples = abcdigits_all_keys(loaded.tokenizer, length, trial=0, seed=seed)
    scores = [AnswerScoreRequest(s.prompt_ids, s.answer_ids) for s in samples]
    generations = [GenerateRequest(s.prompt_ids, len(s.answer_ids)) for s in samples]
    count, trunk = len(samples), trunk_length(scores)
    turn = {"score": 0, "generate": 0}

    def one(kind: str):
        """The next query of the rotation, so every query gets its turn over the rounds."""
        i = turn[kind] % count
        turn[kind] += 1
        return i

    def generate_one():
        ids = torch.from_numpy(generations[one("generate")].prompt)[None].to(loaded.device)
        with torch.inference_mode():
            return loaded.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=len(samples[0].answer_ids),
                **adapter._greedy(),
            )

    answer_tokens = sum(len(s.answer_ids) for s in samples)
    suffix_tokens = sum(r.length - 1 - trunk for r in scores)
    modes = [
        Mode(
            "branch score (trunk once, 26 suffixes packed)",
            lambda: adapter.answer_branched(scores, budget),
            count,
            trunk + suffix_tokens,
            answer_tokens,
        ),
        Mode(
            "independent score (one pass per query)",
            lambda: adapter.score_answers([scores[one("score")]]),
            1,
            scores[0].length - 1,
            len(samples[0].answer_ids),
        ),
        Mode(
            "branch generate (batched decode on the trunk)",
            lambda: adapter.answer_branched(generations, budget),
            count,
            trunk + sum(r.length - trunk for r in generations) + answer_tokens,
            answer_tokens,
        ),
        Mode(
            "generate loop (plain transformers, one query)",
            generate_one,
            1,
            generations[0].length + len(samples[0].answer_ids),
            len(samples[0].answer_ids),
        ),
    ]
    per_call = run_rounds(modes, loaded.device, seconds, rounds)
    total = {m.label: per_call[m.label] * (count // m.batch) for m in modes}  # seconds for all the queries

    # the verdicts: branched answers against independent ones, on every query
    branch_scores, branch_tokens = adapter.answer_branched(scores, budget), adapter.answer_branched(generations, budget)
    alone_scores = [adapter.score_answers([r])[0] for r in scores]
    max_diff = max(
        float(np.abs(a.token_logprobs - b.token_logprobs).max()) for a, b in zip(branch_scores, alone_scores)
    )
    greedy_agree = sum(a.greedy_correct == b.greedy_correct for a, b in zip(branch_scores, alone_scores))
    decoded_right = sum(
        len(t) == len(s.answer_ids) and bool((t == s.answer_ids).all()) for t, s in zip(branch_tokens, samples)
    )
    agree_generate = sum(
        bool(b.greedy_correct) == (len(t) == len(s.answer_ids) and bool((t == s.answer_ids).all()))
        for b, t, s in zip(branch_scores, branch_tokens, samples)
    )

    costs = prefix_cost.costs_for(adapter, shared_sequence(scores[-1]), budget)
    predicted = {
        "batched": prefix_cost.predicted_seconds(scores, costs, loaded.model.config, budget)[1],
        "walk": prefix_cost.predicted_seconds(scores, costs, loaded.model.config, budget)[0],
    }
    if adapter.can_branch():
        predicted["branch"] = prefix_cost.predicted_branch_seconds(scores, costs, loaded.model.config, budget)
    chosen = prefix_cost.choose_path(predicted)

    baseline = {"score": total[modes[1].label], "generate": total[modes[3].label]}
    rows = []
    for mode, kind in zip(modes, ("score", "score", "generate", "generate")):
        rows.append(
            {
                "contender": mode.label,
                "queries": count,
                "context_length": length,
                "trunk_tokens": trunk,
                "seconds_all_queries": round(total[mode.label], 3),
                "queries_per_s": round(count / total[mode.label], 3),
                "tokens_computed": mode.tokens_computed * (count // mode.batch),
                "speedup_vs_one_pass": round(baseline[kind] / total[mode.label], 2),
                "timing": TIMING.format(rounds or ROUNDS),
            }
        )
    frame = write_table(rows, loaded, out, "bench_queries.csv")
    frame.attrs["caption"] = (
        f"evalkit bench queries: ABCDigits over all {count} keys on one {length}-token haystack; "
        f"{TIMING.format(rounds or ROUNDS)}. "
        f"Branched vs independent log-probs: max |diff| {max_diff:.2e}, greedy verdicts agree {greedy_agree}/{count}; "
        f"branched decoding right on {decoded_right}/{count}, agreeing with the scored verdict on "
        f"{agree_generate}/{count}. "
        f"Cost model (auto) picks: {chosen} (predicted s: {', '.join(f'{k} {v:.2f}' for k, v in predicted.items())})"
    )
    frame.attrs["checks"] = {
        "max_logprob_diff": max_diff,
        "greedy_agree": greedy_agree,
        "decoded_right": decoded_right,
        "auto_path": chosen,
        "predicted_seconds": predicted,
    }
    return frame
