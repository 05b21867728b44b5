"""Evaluation metrics: classification accuracy/loss, membership inference, continual learning."""

from rmlora.metrics.classification import (
    accuracy,
    avg_gap,
    per_class_accuracy,
    per_sample_loss,
    predict,
)
from rmlora.metrics.continual import accuracy_matrix_summary
from rmlora.metrics.lira import attack_scores, kept_view_statistic, likelihood_ratio, tpr_at_fpr, ulira
from rmlora.metrics.mia import (
    entropy,
    forget_mia_auc,
    loss_auc,
    mia_efficacy,
    true_label_confidence,
)
from rmlora.metrics.whitebox import linear_probe, penultimate_features, relearn_steps

__all__ = [
    "predict",
    "accuracy",
    "per_class_accuracy",
    "per_sample_loss",
    "avg_gap",
    "loss_auc",
    "entropy",
    "true_label_confidence",
    "mia_efficacy",
    "forget_mia_auc",
    "accuracy_matrix_summary",
    "kept_view_statistic",
    "likelihood_ratio",
    "attack_scores",
    "tpr_at_fpr",
    "ulira",
    "penultimate_features",
    "linear_probe",
    "relearn_steps",
]
