"""evalkit: a long-context evaluation harness for Softmax vs Scalable-Softmax attention.

Importing this package is cheap on purpose (no torch): the CLI's ``--help`` must stay fast.
"""

__version__ = "0.1.0"
