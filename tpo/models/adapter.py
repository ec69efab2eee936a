"""Model adapters: everything the trainer needs to know about one video-LMM family.

The trainer, the data pipeline and the evaluator talk to a model only through a
:class:`ModelAdapter`; nothing else branches on a model name. An adapter loads model and
processor, turns (frames, question, response) into model inputs with the family's chat
template and a label mask over the response tokens only, names the trainable parts and
the transformer-block classes FSDP wraps.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from tpo.builtin import resolve
from tpo.data.frames import Clip
from tpo.errors import ConfigError

IGNORE_INDEX = -100
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_ANSWER_MARK = "TPO_ANSWER_MARK"  # rendered as an assistant turn's content to find what ends the turn
_END_OF_TURN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # processor -> its end-of-turn ids
# Processor outputs with one entry per token; everything else is a vision tensor.
PER_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
PARTS = ("vision_tower", "projector", "language_model")  # what `trainable` chooses from
# Weights the video path never uses (an image-only newline, an audio tower): never trained, since DDP
# expects a gradient for every trainable parameter.
UNUSED = "unused"


def _resolve(path: str) -> str:
    return str(resolve(path))


def pad_token_id(processor) -> int:
    """The tokenizer's pad id, or its eos id when it has no pad token."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def time_instruction(clip: Clip) -> str:
    """LLaVA-Video's time instruction (as its training and its authors' evaluation wrote it)."""
    times = ",".join(f"{t:.2f}s" for t in clip.times)
    return (f"The video lasts for {clip.metadata.duration:.2f} seconds, and {len(clip)} frames are uniformly sampled from it. "
            f"These frames are located at {times}.Please answer the following questions related to this video.")


def ends_in_open_think(text: str) -> bool:
    """Whether a rendered prompt ends inside a reasoning block (``<think>`` with no ``</think>`` after it)."""
    return text.rfind(THINK_OPEN) > text.rfind(THINK_CLOSE)


def end_of_turn_ids(processor) -> list[int]:
    """The token that ends an assistant turn in the processor's chat template, then the tokenizer's
    eos if it is another one (both stop generation; training labels the first).

    Read off the template itself: an assistant turn is rendered between two user turns, and the
    first special token after its content is the end of the turn (``<|im_end|>`` for ChatML,
    ``<|user|>`` for GLM-4.1V, ``<turn|>`` for Gemma 4), not taken to be ``eos_token``. A template
    that closes the turn with no special token (LLaVA-NeXT-Video's ``ASSISTANT: answer `` runs into
    the next ``USER:``) or renders no assistant turn leaves the eos token alone to end it
    (``</s>``, where Vicuna's training ends a turn and LLaVA-NeXT-Video's generation stops).
    """
    try:
        return _END_OF_TURN[processor]
    except (KeyError, TypeError):
        pass
    tok = getattr(processor, "tokenizer", processor)
    ids = [i for i in (_template_end_of_turn(processor, tok), tok.eos_token_id) if i is not None]
    ids = list(dict.fromkeys(ids))
    try:
        _END_OF_TURN[processor] = ids
    except TypeError:  # not weakly referenceable: computed each time
        pass
    return ids


def _template_end_of_turn(processor, tok) -> int | None:
    def user(text: str) -> dict:
        return {"role": "user", "content": [{"type": "text", "text": text}]}

    turns = [user("Q"), {"role": "assistant", "content": [{"type": "text", "text": _ANSWER_MARK}]}, user("Q")]
    try:
        text = processor.apply_chat_template(turns, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render this turn: the eos token ends it
        return None
    if _ANSWER_MARK not in text:
        return None
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    after = tok(text.split(_ANSWER_MARK, 1)[1], add_special_tokens=False)["input_ids"]
    return next((i for i in after if i in special), None)


@dataclass
class PromptEncoding:
    """A processed (video, question) prompt.

    ``tokens`` holds per-token tensors of shape ``(L,)`` (``input_ids``, ``attention_mask`` and
    any family-specific per-token ids); ``vision`` the vision tensors exactly as the processor
    returned them for this one video.
    """

    tokens: dict[str, torch.Tensor]
    vision: dict[str, torch.Tensor]


@dataclass(frozen=True)
class ModelAdapter:
    family: str
    model_types: tuple[str, ...]  # `config.model_type` values this family loads
    parts: dict[str, tuple[str, ...]]  # part (PARTS, or UNUSED) -> parameter-name prefixes
    description: str = ""
    processor_kwargs: dict = field(default_factory=lambda: {"do_sample_frames": False})
    time_instruction: bool = False  # LLaVA-Video's sentence on the frames' times before the question
    thinking: bool = False  # the template's reasoning mode (``enable_thinking``); off: answers are final answers

    # ---- loading -------------------------------------------------------------------------
    def load_config(self, path: str):
        """The checkpoint's ``transformers`` config, checked to belong to this family."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(_resolve(path))
        if config.model_type not in self.model_types:
            raise ConfigError(
                f"{path} holds a {config.model_type!r} model, but model family {self.family!r} expects one of "
                f"{list(self.model_types)}; set `family` to match the checkpoint"
            )
        return config

    def load(self, path: str, dtype: torch.dtype | None = None):
        """``(model, processor)`` from a local directory or hub id (``builtin:`` paths resolved)."""
        from transformers import AutoModelForImageTextToText

        path = _resolve(path)
        self.load_config(path)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype or torch.float32)
        return model, self.load_processor(path)

    def load_processor(self, path: str):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(_resolve(path))

    # ---- inputs --------------------------------------------------------------------------
    def prompt_text(self, processor, question: str, clip: Clip | None = None) -> str:
        """The chat template's prompt for one question, ending where the answer starts. With thinking
        off, a hybrid template is asked for no reasoning (``enable_thinking=False``), and a prompt still
        ending inside a reasoning block (a thinking-only template) gets the block closed empty, as
        hybrid templates write it: the answer is then the final answer, in data, training and evaluation."""
        if self.time_instruction:
            question = f"{time_instruction(clip)}\n{question}"
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                             enable_thinking=self.thinking)
        if not self.thinking and ends_in_open_think(text):
            text = text.rstrip("\n") + "\n\n" + THINK_CLOSE + "\n\n"
        return text

    def encode_prompt(self, processor, clip: Clip, question: str) -> PromptEncoding:
        """Process one video clip and its question into a prompt encoding.

        The clip's timing goes to the processor as ``video_metadata``: families that place frames in
        time use it, the others ignore it.
        """
        out = processor(text=[self.prompt_text(processor, question, clip)], videos=[clip.frames],
                        video_metadata=[clip.metadata], return_tensors="pt", **self.processor_kwargs)
        tokens = {k: v[0] for k, v in out.items() if k in PER_TOKEN_KEYS}
        vision = {k: v for k, v in out.items() if k not in PER_TOKEN_KEYS}
        return PromptEncoding(tokens, vision)

    def response_ids(self, processor, response: str, end: bool = True) -> list[int]:
        """The response's tokens followed by the end-of-turn token the model must learn to emit
        (:func:`end_of_turn_ids`); ``end=False`` for an answer that was cut off, so the model never
        learns to stop mid-sentence."""
        tok = getattr(processor, "tokenizer", processor)
        return tok(response, add_special_tokens=False)["input_ids"] + (end_of_turn_ids(processor)[:1] if end else [])

    # ---- structure -----------------------------------------------------------------------
    def part_of(self, param_name: str) -> str:
        """The part (one of :data:`PARTS`, or :data:`UNUSED`) a parameter belongs to, by longest prefix."""
        best, best_len = None, -1
        for part, prefixes in self.parts.items():
            for prefix in prefixes:
                if (param_name == prefix or param_name.startswith(prefix + ".")) and len(prefix) > best_len:
                    best, best_len = part, len(prefix)
        if best is None:
            raise ValueError(f"{self.family}: parameter {param_name!r} belongs to none of {list(self.parts)}")
        return best

    def set_trainable(self, model: nn.Module, trainable: list[str] | tuple[str, ...]) -> None:
        """Parameters of the ``trainable`` parts learn, all others are frozen (:data:`UNUSED` ones always)."""
        unknown = set(trainable) - set(PARTS)
        if unknown:
            raise ConfigError(f"unknown trainable part(s) {sorted(unknown)}; choose from {list(PARTS)}")
        for name, param in model.named_parameters():
            param.requires_grad_(self.part_of(name) in trainable)

    @staticmethod
    def rope_index(model: nn.Module | None):
        """The model's multimodal rotary-position function (``get_rope_index``: 3-D M-RoPE positions of
        Qwen2-VL and its successors, GLM-4V, ...), or None for a model with 1-D positions.

        Looked up along the ``.model`` chain, so a ``peft`` wrapper or the bare inner model work too.
        """
        for _ in range(4):  # peft wrapper -> LoRA model -> *ForConditionalGeneration -> inner model
            if model is None:
                return None
            rope_index = getattr(model, "get_rope_index", None)
            if callable(rope_index):
                return rope_index
            model = getattr(model, "model", None)
        return None

    @staticmethod
    def block_classes(model: nn.Module) -> set[type[nn.Module]]:
        """Transformer-block classes (language and vision) for FSDP wrapping and checkpointing.

        A block is a layer of a stack (an element of an ``nn.ModuleList``) that is, or holds, a module the
        model declares unsplittable (``_no_split_modules``; some declare a vision layer's attention rather
        than the layer), and holds no other such layer. The declaration alone also names embeddings and
        pooling heads; a stack alone also holds projector lists (Qwen3-VL's deepstack mergers).
        """
        unsplittable = set(getattr(model, "_no_split_modules", None) or [])
        layers = [layer for stack in model.modules() if isinstance(stack, nn.ModuleList) for layer in stack]
        declared = [layer for layer in layers if any(type(m).__name__ in unsplittable for m in layer.modules())]
        declared_ids = {id(layer) for layer in declared}

        def holds_another(layer: nn.Module) -> bool:
            return any(id(m) in declared_ids for m in layer.modules() if m is not layer)

        return {type(layer) for layer in declared if not holds_another(layer)}
