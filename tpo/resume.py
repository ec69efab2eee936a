"""A fit that goes on over several sessions: a resumed run keeps its folder and its earlier checkpoints,
and Ctrl-C or SIGTERM stop it with a checkpoint and the command that resumes it."""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tpo.clean_exit import StopSignals


def run_of_checkpoint(ckpt_path: str | None) -> Path | None:
    """The run folder of a checkpoint ``<run>/checkpoints/<file>``; None for any other path or value."""
    if ckpt_path is None:
        return None
    path = Path(ckpt_path).absolute()  # not resolved: last.ckpt may link to a checkpoint of the same folder
    return path.parent.parent.resolve() if path.parent.name == "checkpoints" else None


def resume_command(argv: list[str], checkpoint: str) -> str:
    """The shell command that runs ``tpo <argv>`` again from ``checkpoint`` (any earlier ``--ckpt_path`` dropped)."""
    program = "tpo" if Path(sys.argv[0]).name == "tpo" else "python -m tpo"
    args, skip = [], False
    for arg in argv:
        if not skip and arg != "--ckpt_path" and not arg.startswith("--ckpt_path="):
            args.append(arg)
        skip = arg == "--ckpt_path"
    return f"{program} {shlex.join([*args, '--ckpt_path', checkpoint])}"


def last_checkpoint(ckpt: ModelCheckpoint) -> str:
    return ckpt.format_checkpoint_name({}, ckpt.CHECKPOINT_NAME_LAST)


def link(trainer: L.Trainer, target: str, path: str) -> None:
    """``path`` becomes a link to the checkpoint ``target`` (rank 0 writes it, every rank waits for it)."""
    if trainer.is_global_zero:
        os.symlink(os.path.relpath(target, os.path.dirname(path)), f"{path}.tmp")
        os.replace(f"{path}.tmp", path)
    trainer.strategy.barrier()


def keep_earlier_checkpoints(ckpt: ModelCheckpoint, resumed: str) -> None:
    """A resumed session's ModelCheckpoint deletes or overwrites no file of the earlier sessions.

    Lightning reloads the top-k bookkeeping of the run it resumes and deletes those files as the new session's
    replace them. With ``save_last="link"``, a session that saved nothing yet writes its last checkpoint into
    last.ckpt, through the link, over the checkpoint it links to: here last.ckpt stays a link, relinked in place.
    Any other last.ckpt is left alone (Lightning writes last-v1.ckpt beside it).
    """
    ckpt.best_k_models, ckpt.kth_best_model_path, ckpt.best_model_path, ckpt.best_model_score = {}, "", "", None
    last = last_checkpoint(ckpt)
    if ckpt.save_last == "link" and os.path.islink(last):
        ckpt.last_model_path = last
        # internal: what last.ckpt links to until this session saves; Lightning writes last.ckpt when it is empty
        ckpt._last_checkpoint_saved = os.path.realpath(resumed)
    else:
        ckpt.last_model_path = ""


class ResumableRun(L.Callback):
    """A fit that stops and goes on over several sessions.

    SIGINT (Ctrl-C) and SIGTERM (a scheduler's stop) stop training after the current optimizer step on every
    rank: the run saves ``<run>/checkpoints/epoch=E-step=S-interrupted.ckpt`` (and links last.ckpt to it, with
    ``save_last="link"``), prints the command that resumes from it, and exits 128 + the signal (130, 143).
    Before training starts and after it ends, and at a second signal, the run stops at once, with the same
    status and no checkpoint.

    A resumed session deletes no checkpoint of an earlier one (:func:`keep_earlier_checkpoints`).
    """

    def __init__(self, argv: list[str], signals: StopSignals):
        self.argv, self.signals = argv, signals
        self.step = 0
        self.saved: str | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.ckpt_path is not None:
            for ckpt in trainer.checkpoint_callbacks:
                if isinstance(ckpt, ModelCheckpoint):
                    keep_earlier_checkpoints(ckpt, trainer.ckpt_path)
        self.step = trainer.global_step
        self.signals.install()  # in front of Lightning's SIGTERM handler, which stops without a checkpoint
        self.signals.deferred = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:  # between the batches of one accumulated step
            return
        self.step = trainer.global_step
        received = torch.tensor([self.signals.received or 0], device=trainer.strategy.root_device)
        signum = int(trainer.strategy.reduce(received, reduce_op="max"))  # a signal to any rank stops them all
        if signum:
            self.signals.received = signum
            self.saved = self._save(trainer)

    def _save(self, trainer: L.Trainer) -> str:
        """Here, where ModelCheckpoint saves too, Lightning resumes at the next batch."""
        ckpt = trainer.checkpoint_callback
        folder = ckpt.dirpath if isinstance(ckpt, ModelCheckpoint) else os.path.join(trainer.log_dir, "checkpoints")
        path = os.path.join(folder, f"epoch={trainer.current_epoch}-step={trainer.global_step}-interrupted.ckpt")
        trainer.save_checkpoint(path, weights_only=False)
        if isinstance(ckpt, ModelCheckpoint) and ckpt.save_last == "link":
            last = last_checkpoint(ckpt)
            if os.path.islink(last) or not os.path.exists(last):
                link(trainer, path, last)
        return path

    # Lightning logs a step's metrics after on_train_batch_end: the run stops at whichever hook comes next
    def on_train_batch_start(self, trainer: L.Trainer, *_) -> None:
        self._exit(trainer)

    def on_validation_start(self, trainer: L.Trainer, *_) -> None:
        self._exit(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, *_) -> None:
        self._exit(trainer)

    def _exit(self, trainer: L.Trainer) -> None:
        if self.saved is None:
            return
        if trainer.is_global_zero:
            print(f"{signal.Signals(self.signals.received).name}: stopped after step {trainer.global_step}; "
                  f"to resume: {resume_command(self.argv, self.saved)}", file=sys.stderr, flush=True)
        raise SystemExit(self.signals.status)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self.signals.deferred = False

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        self.signals.deferred = False
