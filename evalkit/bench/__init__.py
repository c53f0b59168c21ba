"""Speed benchmarks, one module per bench (``perplexity``, ``needle``, ``focus``, ``nested``,
``queries``), their shared timing in ``timing``, and the suite that runs them all into one report."""
