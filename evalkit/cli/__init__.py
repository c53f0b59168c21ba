"""The command groups of ``evalkit``, one module each; ``cli.py`` at the top assembles them."""
