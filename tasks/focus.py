"""Attention focus: where attention mass goes as the context grows, for every layer and head.

On needle samples (the needle task's builder and flags), the probe measures for chosen query
rows how much attention lands on the needle, how peaked the rows are, and whether the top key
is a needle token: the SSMax paper's central evidence that Softmax attention fades with length.
``--analytic`` needs no model: the top weight of Softmax and SSMax for controlled logits as n
grows (the paper's Figure 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evalkit.core.errors import ConfigError
from evalkit.core.grid import parse_lengths
from evalkit.core.requests import PROBE_METRICS, ProbeRequest
from evalkit.core.task import Sample, Task, option
from evalkit.data.options import NeedleGridOptions, needle_samples, parse_trials, provenance
from evalkit.report import stats

TOP_HEADS = 5


@dataclass(frozen=True)
class FocusOptions(NeedleGridOptions):
    layers: str = option("all", "Layers to probe: all, or indices like 0,6,11.")
    query: str = option(
        "last",
        "Query rows: last (the last prompt token) or answer (each gold answer position).",
        choices=("last", "answer"),
    )
    analytic: bool = option(
        False, "Model-free: top attention weight of Softmax vs SSMax as n grows (the paper's Figure 1)."
    )
    n: str = option("16..1m", "Analytic mode: numbers of keys, e.g. 16..1m (doubling).")
    logits: str = option(
        "onehot",
        "Analytic mode: one logit GAP above n-1 zeros (onehot), or n i.i.d. normal logits with std GAP (normal).",
        choices=("onehot", "normal"),
    )
    gap: float = option(2.0, "Analytic mode: the large logit's margin (onehot) or the logits' std (normal).")


class FocusTask(Task):
    name = "focus"
    description = "Attention mass on the needle, peak weight and entropy per layer and head, vs context length."
    Options = FocusOptions
    key_columns = ("depth", "trial", "layer", "head")

    @classmethod
    def request_kinds(cls, options) -> frozenset[str]:
        return frozenset({"probe"})

    @classmethod
    def unit_columns(cls, options) -> tuple[str, ...]:
        from evalkit.data.options import needle_unit_columns

        return needle_unit_columns(options)

    @staticmethod
    def model_free(options: FocusOptions) -> bool:
        return options.analytic

    def __init__(self, options: FocusOptions, context):
        super().__init__(options, context)
        if options.analytic:
            self.n_values = parse_lengths(options.n)
            return
        self.lengths, self.depths = options.validate()
        if not isinstance(parse_trials(options.trials), int):
            raise ConfigError(
                f"--trials {options.trials}: auto sizes a needle grid for an accuracy drop",
                "give focus a number of trials",
            )
        self.layers = None
        if options.layers != "all":
            try:
                self.layers = tuple(sorted({int(x) for x in options.layers.split(",")}))
            except ValueError:
                raise ConfigError(f"bad --layers {options.layers!r}", "write all, or indices like 0,6,11") from None

    def _numbered(self) -> list[tuple[str, object]]:
        """(sample id, NeedleSample) for the grid."""
        return [
            (f"L{s.context_length}-d{s.depth:g}-t{s.trial}", s)
            for s in needle_samples(self.options, self.context, self.lengths, self.depths)
        ]

    def samples(self) -> list[Sample]:
        out = []
        for sample_id, s in self._numbered():
            if not s.needle_spans:
                raise ConfigError(
                    "a sample has no needle span to measure attention on", "give needle text in the samples file"
                )
            prompt = len(s.prompt_ids)
            if self.options.query == "answer":
                tokens = np.concatenate([s.prompt_ids, s.answer_ids])
                rows = tuple(
                    range(prompt - 1, prompt + len(s.answer_ids) - 1)
                )  # positions predicting each answer token
            else:
                tokens, rows = s.prompt_ids, (prompt - 1,)
            start, end = s.needle_spans[0]
            out.append(
                Sample(
                    sample_id,
                    ProbeRequest(tokens, rows, (start, end), self.layers),
                    {"context_length": s.context_length, "depth": s.depth, "trial": s.trial},
                    provenance(s, self.context.seed),
                )
            )
        return out

    def export_records(self) -> list[dict]:
        from evalkit.store.records import needle_records

        return needle_records(self._numbered(), self.context.tokenizer, self.context.seed)

    def rows(self, sample: Sample, answer) -> list[dict]:
        rows = []
        for metric in PROBE_METRICS:
            values = answer.metrics[metric]  # (layers, heads)
            for (i, head), value in np.ndenumerate(values):
                rows.append(
                    {
                        **sample.keys,
                        "layer": answer.layers[i],
                        "head": head,
                        "metric": metric,
                        "value": float(value),
                        **sample.meta,
                    }
                )
        return rows

    # -- model-free mode ------------------------------------------------------------------
    def model_free_rows(self, attention: dict) -> list[tuple[str, str, list[dict]]]:
        from evalkit.models.probe import analytic_max_weight, analytic_random_max_weight

        s = attention.get("s", 0.43)
        o = self.options
        out = []
        for label, scale in (("softmax", None), ("ssmax", s)):
            if o.logits == "onehot":
                weights = analytic_max_weight(np.array(self.n_values), o.gap, scale)
            else:
                weights = analytic_random_max_weight(
                    self.n_values, scale, samples=64, seed=self.context.seed, scale=o.gap
                )
            rows = [
                {
                    "context_length": int(n),
                    "metric": "max_weight",
                    "value": float(w),
                    "logits": o.logits,
                    "gap": o.gap,
                    "s": scale,
                }
                for n, w in zip(self.n_values, weights)
            ]
            out.append((label, f"analytic-{o.logits}", rows))
        return out

    # -- tables and figures ---------------------------------------------------------------
    @staticmethod
    def in_heads(frame, heads) -> np.ndarray:
        """Which rows of ``frame`` belong to the (layer, head) pairs listed in ``heads``."""
        import pandas as pd

        wanted = pd.MultiIndex.from_arrays([heads["layer"], heads["head"]])
        return pd.MultiIndex.from_arrays([frame["layer"], frame["head"]]).isin(wanted)

    def top_heads(self, frame):
        """Per variant, the heads with the highest mean needle mass over all samples."""
        mass = frame[frame.metric == "needle_mass"]
        means = mass.groupby(["attention", "layer", "head"], sort=False)["value"].mean().reset_index()
        return {a: part.nlargest(TOP_HEADS, "value") for a, part in means.groupby("attention", sort=False)}

    def summarize(self, frame):
        """Per variant and length: needle mass, normalized entropy and top-1-in-needle, averaged over
        heads within each sample first (heads of one prompt are not independent), then with a t
        interval over independent units (trials). Top-head numbers carry no interval: the heads are
        picked on the same data."""
        import pandas as pd

        if self.options.analytic:
            return frame.pivot_table(index="context_length", columns="attention", values="value").reset_index()
        top = self.top_heads(frame)
        per_sample = self.per_sample(frame)
        units = self.unit_columns(self.options)
        rows = []
        for (attention, length), part in frame.groupby(["attention", "context_length"], sort=False):
            samples = per_sample[(per_sample.attention == attention) & (per_sample.context_length == length)]
            heads = top[attention]
            in_top = self.in_heads(part, heads)
            row = {"attention": attention, "context_length": int(length)}
            for metric in ("needle_mass", "entropy_norm", "top1_in_needle"):
                values = samples[samples.metric == metric]
                e = stats.clipped(stats.mean(values.value, stats.unit_keys(values, units)), 0.0, 1.0)  # fractions
                row.update({"n": e.n, "units": e.units, **stats.columns(e, metric)})
            row.update(
                {
                    "needle_mass_top_heads": part[in_top & (part.metric == "needle_mass")].value.mean(),
                    "entropy": part[part.metric == "entropy"].value.mean(),
                    "top_heads": " ".join(f"L{l}H{h}" for l, h in zip(heads["layer"], heads["head"])),
                }
            )
            rows.append(row)
        order = {a: k for k, a in enumerate(pd.unique(frame.attention))}
        return pd.DataFrame(rows).sort_values(
            ["attention", "context_length"], key=lambda c: c.map(order) if c.name == "attention" else c
        )

    def per_sample(self, frame):
        """One value per (sample, metric): the mean over the sample's layers and heads."""
        columns = ["attention", *self.sample_columns(), *(["seed"] if "seed" in frame.columns else []), "metric"]
        return frame.groupby(columns, as_index=False, sort=False)["value"].mean()

    def plot(self, frame, title, plots_dir):
        from tasks import focus_plots

        if self.options.analytic:
            return [focus_plots.analytic(frame, self.options, plots_dir / "analytic_max_weight.png")]
        train = self.context.marked_length
        summary = self.summarize(frame)
        return [
            focus_plots.mass_vs_length(
                frame,
                summary,
                self.top_heads(frame),
                self.in_heads,
                title,
                train,
                plots_dir / "needle_mass_vs_length.png",
            ),
            focus_plots.layer_head_heatmap(frame, title, plots_dir / "needle_mass_layer_head.png"),
            focus_plots.entropy_vs_length(summary, title, train, plots_dir / "entropy_norm_vs_length.png"),
        ]
