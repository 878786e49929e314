"""lmms_output: the reasoning-tag stripping and trimming lmms-eval applies before scoring."""

import pytest

from ov_eval.tasks.lmms_output import lmms_eval_output, strip_reasoning_tags


@pytest.mark.parametrize(
    ("output", "cleaned"),
    [
        ("B", "B"),
        ("  B\n\n", "B"),
        ("<think>maybe A</think>B", "B"),
        ("<think>a</think> B <think>b</think>", "B"),
        ("<analysis>A</analysis>\nB.", "B."),
        ("prefilled reasoning</think>\nB", "B"),  # only a closing tag: what follows it
        ("<think>never closed B", "<think>never closed B"),
        ("</think>A<think>", "</think>A<think>"),  # closing before opening: left alone
        ("<THINK>x</THINK>B", "<THINK>x</THINK>B"),  # tags are case-sensitive
    ],
)
def test_reasoning_blocks_are_removed_and_the_output_trimmed(output, cleaned):
    assert lmms_eval_output(output) == cleaned
    assert strip_reasoning_tags(output) == cleaned
