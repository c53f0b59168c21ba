"""A character-level tokenizer for the reference models: one character, one token.

The vocabulary is fixed (so data generation needs no tokenizer object): the end-of-text token
(id 0, also the padding token; there is no BOS), an unknown token, the newline, then printable
ASCII from the space to "~". ABCDigits lines ``K=DDDD\\n`` use only "\\n", "=", digits and
uppercase letters; the rest is there so any ASCII text (other needles, the perplexity corpus)
tokenizes too, non-ASCII characters becoming ``<unk>``.

Built with ``tokenizers``: a WordLevel model over single characters behind a pre-tokenizer that
isolates every character, and a Fuse decoder, wrapped in ``PreTrainedTokenizerFast``; so
``save_pretrained`` writes ordinary ``tokenizer.json`` files that ``AutoTokenizer`` loads.
"""

from __future__ import annotations

EOT = "<|endoftext|>"
UNK = "<unk>"
CHARS: tuple[str, ...] = ("\n", *(chr(c) for c in range(32, 127)))
VOCAB: dict[str, int] = {EOT: 0, UNK: 1, **{ch: i + 2 for i, ch in enumerate(CHARS)}}
EOT_ID = VOCAB[EOT]


def char_ids(text: str) -> list[int]:
    """The ids the tokenizer gives ``text`` (without building one): for data generation."""
    return [VOCAB.get(ch, VOCAB[UNK]) for ch in text]


def make_char_tokenizer():
    """A ``PreTrainedTokenizerFast`` with one token per character; eos = pad = ``<|endoftext|>``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every char, "\n" too
    backend.decoder = decoders.Fuse()  # join the pieces with nothing between them
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOT,
        pad_token=EOT,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )
