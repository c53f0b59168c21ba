"""What every floor of evalkit stands on: user errors, the task contract and registry, grid specs,
answer scoring and the cache folder. Nothing here imports torch or another evalkit folder."""
