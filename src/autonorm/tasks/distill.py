"""Knowledge distillation from a frozen teacher (Hinton, Vinyals, Dean, 2015).

loss = (1 - w) * CE_ls(s, y) + w * T^2 * KL(softmax(t / T) || softmax(s / T)), batch-mean reduction,
where CE_ls is the cross-entropy with the run's ``optim.label_smoothing`` (the same hard-label
loss as every other row). The teacher runs in eval mode under ``torch.no_grad`` and is kept
outside the module registry, so it is neither trained nor saved in the student's checkpoints.
At test time the teacher is scored on the same batches (``test/teacher_acc``), so the run
reports its teacher's accuracy beside its own.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from autonorm.tasks.transfer import TransferTask


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, temperature: float, weight: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Hinton et al.'s distillation loss (see module docstring)."""
    ce = F.cross_entropy(student_logits, targets, label_smoothing=float(label_smoothing))
    t = float(temperature)
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean", log_target=True,
    )
    return (1.0 - weight) * ce + weight * t * t * kl


class DistillTask(TransferTask):
    """A (transferred) student trained against a teacher's softened predictions."""

    def __init__(self, *args: Any, temperature: float = 4.0, weight: float = 0.7, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.temperature = float(temperature)
        self.kd_weight = float(weight)
        self._teacher: Optional[nn.Module] = None
        self.teacher_test_acc = MulticlassAccuracy(num_classes=self.hparams["num_classes"], average="micro")

    def set_teacher(self, teacher: nn.Module) -> None:
        teacher.eval().requires_grad_(False)
        object.__setattr__(self, "_teacher", teacher)

    def on_fit_start(self) -> None:
        if self._teacher is None:
            raise RuntimeError("DistillTask needs a teacher: call set_teacher() before fit")
        self._teacher.to(self.device).eval()

    def on_test_start(self) -> None:
        if self._teacher is not None:
            self._teacher.to(self.device).eval()

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        if self._teacher is not None:
            x, y = batch
            with torch.no_grad():
                self.teacher_test_acc(self._teacher(x), y)
            self.log("test/teacher_acc", self.teacher_test_acc)

    def training_loss(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self._teacher(x)
        return kd_loss(logits, teacher_logits, y, self.temperature, self.kd_weight, float(self.optim_cfg.get("label_smoothing", 0.0)))
