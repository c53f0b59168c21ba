"""The decoder body of a causal LM: the module whose output carries ``last_hidden_state``.

The adapter runs the body and the LM head apart (the head in row chunks, on answer positions
only), so it needs the body itself. ``get_decoder()`` finds it for most models, but in
transformers 5.24 ``Llama4ForCausalLM`` keeps its body in ``.model`` while its
``base_model_prefix`` names ``language_model``, and ``get_decoder()`` falls back to the whole
causal LM, whose output has logits and no hidden states.
"""

from __future__ import annotations


def decoder_body(model):
    """The module under ``model`` that returns hidden states (B, T, D), not logits."""
    body = model.get_decoder()
    if body is model and model.get_output_embeddings() is not None:
        inner = getattr(model, "model", None)
        if inner is not None and inner is not model:
            return inner
    return body
