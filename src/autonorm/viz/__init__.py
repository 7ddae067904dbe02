"""Figures: training curves, attention rollout, gradient heatmaps, AutoNorm gates, logged series."""

from .plots import (
    attention_rollout,
    collect_gate_values,
    plot_attention,
    plot_curves,
    plot_gates,
    plot_grad_heatmap,
    plot_series,
    plot_time_to_accuracy,
    read_metrics_csv,
)

__all__ = [
    "attention_rollout",
    "collect_gate_values",
    "plot_attention",
    "plot_curves",
    "plot_gates",
    "plot_grad_heatmap",
    "plot_series",
    "plot_time_to_accuracy",
    "read_metrics_csv",
]
