"""The report on the synthetic Zipf corpus, with the balancing numbers asserted for every rule."""

import numpy as np
import pytest
from PIL import Image

from ov_concepts.balance import BalanceConfig, balance
from ov_concepts.errors import BalanceError
from ov_concepts.report import write_report
from ov_concepts.vocabulary import Vocabulary, load_vocabulary

TARGET = 5000  # a quarter of the default 20,000-image corpus

# Measured on the default synthetic corpus (seed 0), top-10 assignment, seed 0, no replacement:
# (rule, effective concepts after, top-1% share after). Before: 369.6 and 37.5%.
MEASURED = [
    ("mean", 788.0, 0.259),
    ("sum", 788.0, 0.259),  # = mean here: every image keeps all K = 10 concepts
    ("max", 661.3, 0.297),
    ("metaclip", 732.8, 0.269),
]


@pytest.fixture(scope="module")
def default_run(synthetic_assignments, tmp_path_factory):
    out = tmp_path_factory.mktemp("balanced")
    return out, balance(synthetic_assignments, out, BalanceConfig(target=TARGET))


def test_default_rule_at_least_doubles_the_effective_number_and_shrinks_the_head(default_run):
    _, stats = default_run
    assert stats.before.effective_concepts == pytest.approx(369.6, rel=0.02)
    assert stats.before.top1_share == pytest.approx(0.375, rel=0.02)
    assert stats.after.effective_concepts >= 2 * stats.before.effective_concepts
    assert stats.after.top1_share < stats.before.top1_share
    assert stats.after.bottom50_share > stats.before.bottom50_share
    assert stats.after.gini < stats.before.gini
    assert stats.after.covered == stats.before.covered == 2000


@pytest.mark.parametrize(("rule", "effective", "top1"), MEASURED)
def test_every_rule_flattens_the_distribution_by_the_measured_amount(
    synthetic_assignments, tmp_path, rule, effective, top1
):
    stats = balance(synthetic_assignments, tmp_path, BalanceConfig(target=TARGET, rule=rule))
    assert stats.after.effective_concepts == pytest.approx(effective, rel=0.02)
    assert stats.after.top1_share == pytest.approx(top1, rel=0.02)


def test_uniform_weights_leave_the_distribution_as_it_was(synthetic_assignments, tmp_path):
    stats = balance(synthetic_assignments, tmp_path, BalanceConfig(target=TARGET, alpha=0.0))
    ratio = stats.after.effective_concepts / stats.before.effective_concepts
    assert ratio == pytest.approx(1.0, abs=0.03)


def test_report_writes_a_plot_and_a_markdown_summary(default_run, synthetic_corpus, tmp_path):
    balanced, stats = default_run
    vocabulary = load_vocabulary(synthetic_corpus / "vocabulary.txt")
    report = write_report(balanced, tmp_path, vocabulary)
    text = report.read_text()
    assert report == tmp_path / "report.md"
    before, after = stats.before.effective_concepts, stats.after.effective_concepts
    row = f"| effective number of concepts (exp entropy) | {before:,.1f} | {after:,.1f} | "
    assert row + f"{after / before:.2f}x |" in text
    top_before, top_after = stats.before.top1_share, stats.after.top1_share
    assert f"| share of the top 1% concepts | {top_before:.1%} | {top_after:.1%} |" in text
    assert "![rank-frequency, log-log](rank_frequency.png)" in text
    head = int(np.argmax(np.load(balanced / "counts_before.npy")))
    assert f"| {head} | {vocabulary.concepts[head]} |" in text
    with Image.open(tmp_path / "rank_frequency.png") as image:
        assert image.format == "PNG"
        assert image.size == (840, 540)
    again = write_report(balanced, tmp_path / "again", vocabulary)
    assert (tmp_path / "rank_frequency.png").read_bytes() == (
        again.parent / "rank_frequency.png"
    ).read_bytes()


def test_report_describes_metaclip_runs_with_replacement(synthetic_assignments, tmp_path):
    config = BalanceConfig(target=TARGET, rule="metaclip", replace=True, seed=4)
    stats = balance(synthetic_assignments, tmp_path, config)
    text = write_report(tmp_path).read_text()
    assert f"- rule: metaclip, t = {stats.settings.threshold:.4g}; 5,000 images drawn with " in text
    assert f"({stats.distinct_selected:,} distinct)" in text
    assert "MetaCLIP's Bernoulli curation at this t would keep 5,000 images" in text
    assert "| id | concept |" in text


def test_report_errors_name_the_problem(default_run, tmp_path):
    balanced, _ = default_run
    with pytest.raises(
        BalanceError, match=r"vocabulary has 2 concepts but the assignments have 2000"
    ):
        write_report(balanced, tmp_path, Vocabulary.from_strings(["a", "b"]))
    with pytest.raises(BalanceError, match=r"stats.json: no such file"):
        write_report(tmp_path, tmp_path)
