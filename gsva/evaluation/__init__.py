"""Evaluation: benchmarks in their real formats, the generate and teacher-forced protocols, prompt styles and modes.

Command: ``gsva eval`` (:mod:`gsva.evaluation.command`); metric definitions: :mod:`gsva.scoring`.
"""

from .benchmarks import DATASETS, Benchmark, EvalExpression, EvalImage, open_benchmark
from .prompts import PROMPT_STYLES
from .protocols import SlotOutcome, match_slots
from .runner import PROMPT_MODES, PROTOCOLS, run_benchmark, summarize

__all__ = ["DATASETS", "Benchmark", "EvalExpression", "EvalImage", "open_benchmark", "PROMPT_STYLES", "SlotOutcome",
           "match_slots", "PROMPT_MODES", "PROTOCOLS", "run_benchmark", "summarize"]
