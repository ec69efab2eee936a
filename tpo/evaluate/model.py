"""Loading the model to evaluate (base checkpoint, HF export or Lightning checkpoint) and asking it."""

from __future__ import annotations

from pathlib import Path

import torch

from tpo.builtin import resolve
from tpo.data.frames import Clip
from tpo.errors import TPOError
from tpo.evaluate.likelihood import LikelihoodScorer
from tpo.export import trained_prompt
from tpo.models import FAMILIES, ModelAdapter, get_adapter
from tpo.models.generate import answer_questions, for_inference


def infer_family(path: str) -> str:
    """The adapter family of a checkpoint directory, from its ``config.model_type``."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(str(resolve(path))).model_type
    for name, adapter in FAMILIES.items():
        if model_type in adapter.model_types:
            return name
    raise TPOError(f"{path}: no supported family loads model type {model_type!r}; families: {list(FAMILIES)}")


def _is_checkpoint(path: str) -> bool:
    return str(path).endswith((".ckpt", ".consolidated"))


def _load_checkpoint(path: str) -> dict:
    """A ``tpo fit`` checkpoint, memory-mapped (tensors are read when used)."""
    if Path(path).is_dir():
        raise TPOError(f"{path} is a sharded (FSDP2) checkpoint: make it one file with `python -m "
                       f"lightning.fabric.utilities.consolidate_checkpoint {path}` and evaluate "
                       f"{path}.consolidated, or evaluate the run's HF export")
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if "model_path" not in ckpt.get("hyper_parameters", {}):
        raise TPOError(f"{path} is not a TPO checkpoint (no model_path in its hyper-parameters)")
    return ckpt


def trained_time_instruction(path: str) -> bool:
    """Whether the model at ``path`` was trained with LLaVA-Video's time instruction (a ``tpo fit``
    checkpoint or HF export says so; any other model: no)."""
    if _is_checkpoint(path):
        return bool(_load_checkpoint(path)["hyper_parameters"].get("time_instruction", False))
    return bool(trained_prompt(resolve(path)).get("time_instruction", False))


def checkpoint_family(path: str) -> str:
    """The family of the model at ``path``: a ``tpo fit`` checkpoint's, else its config's."""
    return _load_checkpoint(path)["hyper_parameters"]["family"] if _is_checkpoint(path) else infer_family(path)


def load_for_eval(path: str, family: str | None = None, dtype: torch.dtype = torch.bfloat16, device: str = "auto",
                  time_instruction: bool | None = None):
    """``(adapter, model, processor)`` in eval mode.

    ``path`` is a model directory / hub id / ``builtin:`` path (a base model or a TPO HF export), or
    a Lightning ``.ckpt`` from ``tpo fit`` (or a consolidated sharded one): its policy weights are
    loaded into the base model the run started from (``model_path`` in the checkpoint's hyper-parameters).
    ``time_instruction`` (LLaVA-Video's prompt sentence on the frames' times) defaults to the
    setting the model was trained with (:func:`trained_time_instruction`); the reasoning mode
    (``thinking``) is always the trained one (off for a model tpo did not train).
    """
    if _is_checkpoint(path):
        ckpt = _load_checkpoint(path)
        hparams = ckpt["hyper_parameters"]
        if time_instruction is None:
            time_instruction = bool(hparams.get("time_instruction", False))
        adapter = get_adapter(family or hparams["family"], time_instruction, bool(hparams.get("thinking", False)))
        model, processor = adapter.load(hparams["model_path"], dtype)
        policy = {k.removeprefix("policy."): v for k, v in ckpt["state_dict"].items() if k.startswith("policy.")}
        model.load_state_dict(policy)
    else:
        if time_instruction is None:
            time_instruction = trained_time_instruction(path)
        thinking = bool(trained_prompt(resolve(path)).get("thinking", False))
        adapter = get_adapter(family or infer_family(path), time_instruction, thinking)
        model, processor = adapter.load(path, dtype)
    return adapter, for_inference(model, device), processor


class VideoAnswerer:
    """``answerer(clips, prompts) -> replies``: one batched, greedy generate call."""

    def __init__(self, adapter: ModelAdapter, model, processor, max_new_tokens: int = 16):
        self.adapter, self.model, self.processor, self.max_new_tokens = adapter, model, processor, max_new_tokens

    def __call__(self, clips: list[Clip], prompts: list[str]) -> list[str]:
        answers = answer_questions(self.adapter, self.model, self.processor, clips, prompts, self.max_new_tokens)
        return [a.text for a in answers]


def make_answerer(scoring: str, adapter: ModelAdapter, model, processor, max_new_tokens: int):
    """What evaluation asks: a :class:`VideoAnswerer` (``generate``) or a likelihood scorer."""
    if scoring == "likelihood":
        return LikelihoodScorer(adapter, model, processor)
    return VideoAnswerer(adapter, model, processor, max_new_tokens)
