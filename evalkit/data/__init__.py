"""Text sources shared by every task: corpora, token streams and (later) haystacks."""
