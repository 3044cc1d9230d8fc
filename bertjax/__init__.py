"""bertjax: BERT pretraining (masked LM + next-sentence prediction) in JAX/Flax."""

__version__ = "0.1.0"
