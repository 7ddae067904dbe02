"""Evaluation: robustness (fixed noise / rotation sets, CIFAR-10-C, mCE) and model cost."""

from .corruptions import (
    CIFAR10C_CORRUPTIONS,
    CIFAR10C_PARAMS,
    CORRUPTIONS,
    CorruptionUnavailable,
    corrupt,
    gaussian_noise,
    rotate,
)
from .profile import FLOP_CONVENTION, count_flops, count_params, measure_latency, profile_model
from .robustness import (
    accuracy,
    corruption_errors,
    errors_from_accuracies,
    evaluate_robustness,
    make_corrupted_set,
    make_fixed_sets,
    mce,
)

__all__ = [
    "CIFAR10C_CORRUPTIONS",
    "CIFAR10C_PARAMS",
    "CORRUPTIONS",
    "FLOP_CONVENTION",
    "CorruptionUnavailable",
    "accuracy",
    "corrupt",
    "corruption_errors",
    "count_flops",
    "count_params",
    "errors_from_accuracies",
    "evaluate_robustness",
    "gaussian_noise",
    "make_corrupted_set",
    "make_fixed_sets",
    "mce",
    "measure_latency",
    "profile_model",
    "rotate",
]
