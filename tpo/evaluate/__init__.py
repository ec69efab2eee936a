"""Evaluation: long-video multiple-choice QA (Video-MME, LongVideoBench, MLVU, JSONL) and NIAH.

``python -m tpo.evaluate mcq|niah-make|niah ...``; in training, the :class:`MCQEval` callback.
"""

from tpo.evaluate.answers import extract_choice, mcq_prompt
from tpo.evaluate.benchmarks import MCQItem, load_benchmark
from tpo.evaluate.callback import MCQEval
from tpo.evaluate.mcq import evaluate, summarize

__all__ = ["MCQEval", "MCQItem", "evaluate", "extract_choice", "load_benchmark", "mcq_prompt", "summarize"]
