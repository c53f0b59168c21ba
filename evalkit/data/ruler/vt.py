"""RULER's variable tracking (vt): chains of ``VAR X = VAR Y`` assignments hidden in repeated noise.

As RULER's ``variable_tracking.py`` (synthetic.yaml: 1 chain, 4 hops): a chain starts ``VAR A = 12345``
and each hop copies the previous variable, ``VAR B = VAR A``; the model must name every variable that
holds the value. The statements sit between repeated noise sentences at random, ordered positions. As
in RULER, a worked example (3-letter variables, its answer given) precedes the task; RULER sizes it to
500 tokens, here to at most a quarter of the prompt at short lengths.

The context is noise lines and statement lines, each tokenized on its own, so the token count is a sum;
the last noise line is cut to fill the prompt to exactly ``length`` tokens.
"""

from __future__ import annotations

import string

from evalkit.core.errors import ConfigError
from evalkit.data.haystack import NOISE, _encode
from evalkit.data.ruler import PromptFrame, RulerSample, RulerSource, register

NUM_CHAINS, NUM_HOPS = 1, 4  # RULER's synthetic.yaml
EXAMPLE_TOKENS = 500  # RULER builds its in-context example at max_seq_length 500
TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
PREFIX = (
    "Answer: According to the chain(s) of variable assignment in the text above, "
    "{num_v} variables are assigned the value {query}, they are: "
)
NOISE_LINE = NOISE + "\n"


def _names(rng, count: int, letters: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        name = "".join(rng.choice(list(string.ascii_uppercase), size=letters))
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def _chains(rng, letters: int, taken: set[str], values: set[int]) -> tuple[list[list[str]], list[list[str]], list[int]]:
    """(variables, statement lines, value) per chain; names and values never repeat within a prompt."""
    names, lines, vals = [], [], []
    for _ in range(NUM_CHAINS):
        chain = _names(rng, NUM_HOPS + 1, letters, taken)
        value = int(rng.integers(10000, 100000))
        while value in values:
            value = int(rng.integers(10000, 100000))
        values.add(value)
        names.append(chain)
        vals.append(value)
        lines.append([f"VAR {chain[0]} = {value}\n"] + [f"VAR {b} = VAR {a}\n" for a, b in zip(chain, chain[1:])])
    return names, lines, vals


def _slots(rng, noise_lines: int, statements: int) -> list[int]:
    """Sorted noise-line indices each statement goes before (RULER: random, ordered positions)."""
    return sorted(rng.choice(noise_lines + 1, size=statements, replace=noise_lines + 1 < statements).tolist())


def _example(source: RulerSource, rng, cap: int, taken: set[str], values: set[int]) -> tuple[str, dict]:
    """RULER's in-context example: its own chain in noise, its prompt on one line, its answer after."""
    names, lines, vals = _chains(rng, 3, taken, values)
    head = " ".join(TEMPLATE.split("{context}")[0].split())  # RULER collapses the example template's whitespace
    question = " ".join(TEMPLATE.split("{context}")[1].split()).format(query=vals[0])
    answer = PREFIX.format(num_v=NUM_HOPS + 1, query=vals[0]) + " " + " ".join(names[0])

    def text(noise: int) -> str:
        where, body, statements = _slots(rng, noise, len(lines[0])), [], iter(lines[0])
        for i in range(noise + 1):
            body += [next(statements) for _ in range(where.count(i))]
            body += [NOISE_LINE] * (i < noise)
        return f"{head} {''.join(body)}{question} {answer}"

    per_line = len(_encode(source.tokenizer, NOISE_LINE))
    noise = max(0, (cap - len(_encode(source.tokenizer, text(0)))) // per_line)
    return text(noise), {"variables": names[0], "value": vals[0], "noise_lines": noise}


@register("vt")
def build(source: RulerSource, length: int, index: int) -> RulerSample:
    rng, tok = source.rng("vt", length, index), source.tokenizer
    taken: set[str] = set()
    values: set[int] = set()
    names, lines, vals = _chains(rng, 5, taken, values)
    example, example_info = _example(source, rng, min(EXAMPLE_TOKENS, length // 4), taken, values)
    before, after = TEMPLATE.format(context="\0", query=vals[0]).split("\0")
    frame = PromptFrame.build(
        tok, source.chat, example + "\n\n" + before, after, PREFIX.format(num_v=NUM_HOPS + 1, query=vals[0])
    )
    statements = [_encode(tok, line) for chain in lines for line in chain]
    noise_ids = _encode(tok, NOISE_LINE)
    room = frame.budget(length) - sum(map(len, statements))
    if room < 0:
        raise ConfigError(
            f"context length {length} is too short for vt: its frame and chain need {length - room} tokens",
            "use longer lengths",
        )
    full, cut = divmod(room, len(noise_ids))
    where = _slots(rng, full, len(statements))
    context, pending = [], iter(statements)
    for i in range(full + 1):
        for _ in range(where.count(i)):
            context += next(pending)
        context += noise_ids if i < full else noise_ids[:cut]
    prompt = frame.assemble(context)
    assert len(prompt) == length, (len(prompt), length)  # exact by construction
    provenance = {
        "seed": source.seed,
        "variables": names,
        "values": vals,
        "statement_slots": where,
        "noise_lines": full,
        "cut_noise_tokens": cut,
        "example": example_info,
        "chat": source.chat,
    }
    return RulerSample("vt", length, index, prompt, tuple(names[0]), None, provenance)
