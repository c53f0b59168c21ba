"""One evaluation, start to end: resolving ``--attention`` flags into variants, loading the model,
expanding a task's grid, batching its requests through the runner with progress and resume,
calibration sweeps, sweeps over models, data parallelism, and exporting a run's prompts."""
