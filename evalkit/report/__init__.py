"""Numbers people decide from: statistics, comparisons, gates and figures across runs."""
