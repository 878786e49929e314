"""The benchmark metrics, as pure functions of a prediction and its references.

Each metric lives in its own module with a docstring giving its exact definition and where it
follows (or, rarely and on purpose, departs from) the official scorer. Task files compose them
with the task-specific answer extraction; nothing here knows about datasets or models.

| function | used by |
|---|---|
| `anls` | DocVQA, InfographicVQA |
| `relaxed_accuracy` | ChartQA |
| `vqa_accuracy` (+ `normalize_vqa_answer`) | VQAv2-style data (jsonl tasks) |
| `extract_choice` (+ `option_letters`) | MMMU, MathVista, jsonl multiple choice |
| `exact_match` | AI2D, RealWorldQA, jsonl |
| `ocrbench_match` | OCRBench |
| `levenshtein_distance` | ANLS, MathVista's nearest-option fallback |
"""

from ov_eval.metrics.anls import anls
from ov_eval.metrics.choice import extract_choice, option_letters
from ov_eval.metrics.exact_match import exact_match
from ov_eval.metrics.levenshtein import levenshtein_distance
from ov_eval.metrics.ocrbench import ocrbench_match
from ov_eval.metrics.relaxed_accuracy import relaxed_accuracy
from ov_eval.metrics.vqa_accuracy import normalize_vqa_answer, vqa_accuracy

__all__ = [
    "anls",
    "exact_match",
    "extract_choice",
    "levenshtein_distance",
    "normalize_vqa_answer",
    "ocrbench_match",
    "option_letters",
    "relaxed_accuracy",
    "vqa_accuracy",
]
