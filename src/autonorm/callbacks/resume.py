"""Save the global random number generators in checkpoints, so a resumed run draws the same numbers.

Lightning restores weights, optimizer, schedulers, loops and (with a stateful loader) the data
position, but not the process-wide RNGs. Anything drawing from them during training (Gumbel
noise of the AutoNorm gates, dropout) would then differ after a resume from what an uninterrupted
run draws. :class:`RNGStateCallback` stores the torch (CPU and CUDA), numpy and Python ``random``
states with every checkpoint and puts them back when training resumes from one.

Also here, for the same goal (a killed run, resumed, ends exactly as an uninterrupted one):
:class:`TrainLoaderStateCallback` (the data position), :class:`AutoPathsCallback` (the norms'
``impl="auto"`` paths) and :class:`StepCheckpoint` (mid-epoch ``last.ckpt`` saves that never
capture a state just before an epoch's validation).
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint


def _numpy_state() -> dict[str, Any]:
    # plain types and a tensor only: checkpoints must load with torch.load(weights_only=True)
    name, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": str(name),
        "key": torch.from_numpy(key.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def capture_rng_state() -> dict[str, Any]:
    """The current torch CPU / CUDA, numpy and Python RNG states (CUDA only when initialised).

    Only tensors and plain Python values, so the state loads with ``torch.load(weights_only=True)``.
    """
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back states from :func:`capture_rng_state`; parts that are absent are left alone.

    CUDA states are restored only when the number of visible devices is the same as when saved.
    """
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "numpy" in state:
        np_state = state["numpy"]
        key = np.asarray(torch.as_tensor(np_state["key"]).numpy(), dtype=np.uint32)
        np.random.set_state((np_state["name"], key, int(np_state["pos"]), int(np_state["has_gauss"]), float(np_state["cached_gaussian"])))
    if "python" in state:
        py = state["python"]
        # a checkpoint round trip may turn the inner tuple into a list
        random.setstate((py[0], tuple(py[1]), py[2]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])


class RNGStateCallback(pl.Callback):
    """Checkpoint the global RNG states and restore them on resume (see module docstring).

    Stored under the checkpoint's ``callbacks`` entry of this class. In multi-process training
    every rank restores the states rank 0 saved (``seed_everything`` gives every rank the same
    seed, so their global states agree anyway).
    """

    def state_dict(self) -> dict[str, Any]:
        return capture_rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        restore_rng_state(state_dict)


class AutoPathsCallback(pl.Callback):
    """Keep the ``impl="auto"`` path choices a run used in its checkpoints and pin them on resume.

    The choices live in a per-machine cache file (:mod:`autonorm.kernels.select`) that may change
    while a run is stopped: a choice measured on a busy machine is measured again by the next
    process and can be replaced, or the file deleted. The paths compute the same function up to
    float rounding, so a resumed run on other paths would no longer end bit-identical to one never
    interrupted. This callback stores the entries of the choices made so far with every checkpoint
    (:func:`~autonorm.kernels.select.used_choices`) and pins them when training resumes from one
    (:func:`~autonorm.kernels.select.pin`); keys first met after the resume are chosen as usual.
    """

    def state_dict(self) -> dict[str, Any]:
        from autonorm.kernels import select

        return {"choices": select.used_choices()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        from autonorm.kernels import select

        select.pin(dict(state_dict.get("choices") or {}))


class TrainLoaderStateCallback(pl.Callback):
    """Hand the training loader its saved position on resume, so a killed run continues mid-epoch exactly.

    Lightning 2.x saves a stateful train loader's ``state_dict()`` in checkpoints (fit loop state
    ``combined_loader``) but applies it only if the loader is built after the loops were restored.
    Here the loader is built earlier: ``configure_optimizers`` asks for
    ``trainer.estimated_stepping_batches``, which builds it during strategy setup, and the loop
    state (with the loader state) is restored after that, too late. This callback keeps the saved
    loader states from the checkpoint and loads them into the train loader(s) at ``on_train_start``,
    before the first batch is drawn (loading the same state twice is harmless). Loaders without
    ``load_state_dict`` are skipped.
    """

    def __init__(self) -> None:
        self._states: list[dict[str, Any]] = []

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        fit = (checkpoint.get("loops") or {}).get("fit_loop") or {}
        self._states = list((fit.get("state_dict") or {}).get("combined_loader") or [])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        states, self._states = self._states, []
        if not states:
            return
        loaders = trainer.train_dataloader
        flat = list(loaders.values()) if isinstance(loaders, dict) else list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        stateful = [dl for dl in flat if callable(getattr(dl, "state_dict", None)) and callable(getattr(dl, "load_state_dict", None))]
        if len(stateful) != len(states):
            warnings.warn(
                f"The checkpoint holds {len(states)} train loader state(s) but there are {len(stateful)} stateful "
                "train loader(s); the data position is not restored (the epoch restarts from its first batch).",
                stacklevel=2,
            )
            return
        for loader, state in zip(stateful, states):
            loader.load_state_dict(state)


def _validation_follows(trainer: pl.Trainer) -> bool:
    """Whether validation runs at the end of the current training epoch."""
    every = trainer.check_val_every_n_epoch
    if not trainer.enable_validation or (every is not None and (trainer.current_epoch + 1) % every):
        return False
    return sum(trainer.num_val_batches or [0]) > 0


class StepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for periodic mid-epoch saves that skips the last batch of an epoch.

    Lightning treats a checkpoint written at the end of an epoch's last training batch as a
    finished epoch: a run resumed from it goes on with the next epoch and never runs the
    validation that was due, so that epoch's score is missing from the best-checkpoint tracking
    (and ``best.ckpt`` / ``val_acc`` can differ from an uninterrupted run). When validation
    follows, this callback skips that save and leaves ``last.ckpt`` to an epoch-end
    ``ModelCheckpoint`` (``filename: last``, ``monitor: null``, ``every_n_epochs: 1``, see
    ``conf/callbacks/default.yaml``), which writes it after the validation; a run killed during
    validation resumes from the previous step save and replays the rest of the epoch.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch and _validation_follows(trainer):
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
