"""Reference model pair: tiny Llama models trained with Softmax and with learnable SSMax.

``train_reference_pair(out, recipe="cpu")`` trains two models that differ only in attention
(same initial weights, same batches in the same order) on ABCDigits key-value lines and
writes two Hugging Face checkpoint folders, ``out/softmax`` and ``out/ssmax`` (the latter in
evalkit's attention checkpoint convention, so ``--attention auto`` picks SSMax up), plus
``training_log.csv``, ``loss_curves.png`` and ``summary.json``. Evaluate them with::

    evalkit run needle --model out/ssmax --needle abcdigits --chat off --lengths 64..512

(``--digits`` must match the recipe's ``digits``, 5 by default, the needle task's default too.)

The data match the needle task's ABCDigits prompts token for token: a character-level
tokenizer (one token per character, saved with each model) and lines ``K=DDDDD\\n``, so an
evaluation prompt at the training length is a training sequence cut after its query ``K=``.

Recipes (``RECIPES``; any field can be changed with ``Recipe.replace``):

- ``gpu``: 4 layers, 256 wide, 8 heads, length 256, batch 128, 2500 steps, lr 1e-3 with 200
  warm-up steps: the shape behind the issue's H100 numbers (minutes on one GPU).
- ``cpu``: 2 layers, 64 wide, 8 heads (head size 8), MLP 2x, length 64, batch 32, 3000 steps,
  lr 3e-3 with 100 warm-up steps: about 6 minutes for both models on 2 idle CPU cores (372 s
  measured while other jobs shared the machine). Both recall losses fall from 4.6 to about 1.0
  nats per digit; retrieval is only partly learned at that budget (see ``train.py``).

Submodules: ``tokenizer`` (character-level tokenizer), ``data`` (ABCDigits sequences and the
recall mask), ``train`` (recipes, models, the training loop, the loss figure).
"""

from evalkit.reference.data import AbcBatch, abc_batch, abc_sequence
from evalkit.reference.tokenizer import VOCAB, make_char_tokenizer
from evalkit.reference.train import RECIPES, Recipe, build_pair, get_recipe, plot_training, train_reference_pair

__all__ = [
    "RECIPES",
    "VOCAB",
    "AbcBatch",
    "Recipe",
    "abc_batch",
    "abc_sequence",
    "build_pair",
    "get_recipe",
    "make_char_tokenizer",
    "plot_training",
    "train_reference_pair",
]
