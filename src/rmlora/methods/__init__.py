"""Unlearning and continual-learning procedures, on the adapter path or the full-update baseline."""

from rmlora.methods.train import Batches, fit, snapshot
from rmlora.methods.unlearn import (FIELD_METHODS, METHODS, UnlearnConfig, Unlearning, is_training_free,
                                    make_objective, resolve_methods)

__all__ = ["FIELD_METHODS", "METHODS", "Batches", "UnlearnConfig", "Unlearning", "fit", "is_training_free",
           "make_objective", "resolve_methods", "snapshot"]
