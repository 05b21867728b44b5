"""Unlearning and continual-learning procedures, on the adapter path or the full-update baseline."""

from rmlora.methods.train import Batches, fit, snapshot
from rmlora.methods.unlearn import METHODS, make_objective

__all__ = ["METHODS", "Batches", "fit", "make_objective", "snapshot"]
