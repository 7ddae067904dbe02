"""LightningModules of the phases: classification (pretraining), transfer, distillation."""

from autonorm.tasks.checkpoint import CheckpointError, load_model_checkpoint, load_weights, model_state, read_checkpoint
from autonorm.tasks.classify import ClassificationTask
from autonorm.tasks.distill import DistillTask, kd_loss
from autonorm.tasks.transfer import TransferTask

__all__ = [
    "CheckpointError",
    "ClassificationTask",
    "DistillTask",
    "TransferTask",
    "kd_loss",
    "load_model_checkpoint",
    "load_weights",
    "model_state",
    "read_checkpoint",
]
