"""ChartQA's relaxed accuracy: numbers may be off by 5 %, everything else must match exactly.

The rule (ChartQA paper, section 5.1, after Methani et al. 2020; implemented identically by the
Pix2Struct/Qwen-VL scorers that lmms-eval uses):

- if both the prediction and the answer parse as numbers and the answer is not zero, the
  prediction is right when |prediction - answer| / |answer| <= 5 %;
- otherwise the two strings must be equal, ignoring case.

A number is what Python's `float` accepts, or that followed by '%', which is divided by 100 (so
"12%" and "0.12" are the same value). Nothing else is cleaned up, exactly as in the official rule
(lmms-eval 0.7.3's `relaxed_correctness`, tasks/chartqa/utils.py, from Qwen-VL): "1,000", "$5",
"5 kg" or "about 5" do not parse and fall back to string equality, and a zero answer is only
matched by the same string. The prediction is trimmed first, because lmms-eval trims every
generated output before scoring (`ConfigurableTask.process_results`); the answer is used as
given, as there (`float` itself ignores surrounding whitespace, but "12% " is not a percentage
and " Yes" does not equal "yes").
"""


def _to_number(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, answer: str, tolerance: float = 0.05) -> float:
    """Return 1.0 if `prediction` matches `answer` under ChartQA's relaxed rule, else 0.0."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be non-negative, got {tolerance}")
    prediction = prediction.strip()
    predicted_number = _to_number(prediction)
    answer_number = _to_number(answer)
    if predicted_number is not None and answer_number:
        relative_error = abs(predicted_number - answer_number) / abs(answer_number)
        return 1.0 if relative_error <= tolerance else 0.0
    return 1.0 if prediction.lower() == answer.lower() else 0.0
