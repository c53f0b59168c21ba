"""The backends that answer tasks' requests (the protocol is ``evalkit.core.backend``): ``transformers``
(the exact path: every request kind and variant, probes, shared prefixes), ``torch`` (any causal LM
module that maps token ids to logits), ``vllm`` (a serving engine, when installed)."""
