"""chartqa: the pinned prompt, relaxed accuracy, and the human/augmented split numbers."""

import pytest

from ov_eval.tasks import get_task


def test_load_prompt_score_and_aggregate(tmp_path, make_parquet, make_image_cell):
    rows = [
        {
            "type": "human_test",
            "question": "How many bars?",
            "answer": "12",
            "image": make_image_cell(),
        },
        {
            "type": "augmented_test",
            "question": "Max?",
            "answer": "Japan",
            "image": make_image_cell(),
        },
        {"type": "human_test", "question": "Share?", "answer": "37%", "image": make_image_cell()},
    ]
    make_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", rows)
    task = get_task("chartqa")
    bars, country, share = task.load(tmp_path)
    assert bars.metadata["type"] == "human_test"
    assert task.build_prompt(bars) == "How many bars?\nAnswer the question with a single word."
    assert task.max_new_tokens == 16
    assert task.stop_strings == ()
    assert task.score(bars, " 12\n").score == 1.0  # lmms-eval trims the output first
    assert task.score(bars, " 12\n").extracted == "12"
    assert task.score(bars, "12.5").score == 1.0  # 4.2 % off
    assert task.score(country, "japan").score == 1.0
    assert task.score(share, "0.36").score == 1.0  # 37 % -> 0.37, 2.7 % off
    scored = [
        (bars, task.score(bars, "13")),  # 8 % off
        (country, task.score(country, "Japan")),
        (share, task.score(share, "37")),  # 37 vs 0.37
    ]
    assert task.aggregate(scored) == {
        "relaxed_overall": pytest.approx(1 / 3),
        "relaxed_human_split": 0.0,
        "relaxed_augmented_split": 1.0,
    }
