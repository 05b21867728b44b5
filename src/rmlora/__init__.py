"""rmlora: unlearning and continual learning with digital LoRA adapters on hybrid
analogue-digital resistive-memory compute-in-memory chips (arXiv 2601.10037)."""

__version__ = "0.1.0"
