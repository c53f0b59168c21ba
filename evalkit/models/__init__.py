"""Model adapters: resolving and loading checkpoints, and the batched primitives tasks use."""
