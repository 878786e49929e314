"""Micro-batch sources: exact positions, epochs, steps across epoch ends, supervised counts."""

import pytest
import torch

from ov_train.errors import TrainingError
from ov_train.memory_loader import InMemoryLoader
from ov_train.source import StepBatches, supervised_targets


def _ids(micro_batches, items):
    index = {id(m): i for i, m in enumerate(micro_batches)}
    return [index[id(m)] for m in items]


def _take(iterable_steps, count):
    return [list(iterable_steps.next_step()) for _ in range(count)]


def test_epochs_are_seeded_permutations(make_batches):
    batches = make_batches(6, 1)
    loader = InMemoryLoader(batches, seed=4)
    first, second = list(loader), list(loader)
    assert sorted(_ids(batches, first)) == list(range(6))
    assert _ids(batches, first) != _ids(batches, second)
    again = InMemoryLoader(batches, seed=4)
    assert _ids(batches, list(again)) == _ids(batches, first)
    assert _ids(batches, list(InMemoryLoader(batches, shuffle=False))) == list(range(6))


@pytest.mark.parametrize("stop_after", [0, 1, 4, 5, 6, 9])
def test_a_saved_position_resumes_at_the_exact_next_micro_batch(make_batches, stop_after):
    batches = make_batches(5, 1)
    steps = StepBatches(InMemoryLoader(batches, seed=1), per_step=1)
    uninterrupted = [s[0] for s in _take(steps, 12)]
    partial = StepBatches(InMemoryLoader(batches, seed=1), per_step=1)
    _take(partial, stop_after)
    state = partial.source.state_dict()
    resumed_loader = InMemoryLoader(batches, seed=1)
    resumed_loader.load_state_dict(state)
    resumed = StepBatches(resumed_loader, per_step=1)
    rest = [s[0] for s in _take(resumed, 12 - stop_after)]
    assert _ids(batches, rest) == _ids(batches, uninterrupted[stop_after:])


def test_steps_continue_across_epoch_ends(make_batches):
    batches = make_batches(5, 1)
    loader = InMemoryLoader(batches, seed=2)
    steps = _take(StepBatches(loader, per_step=2), 5)  # 10 micro-batches: exactly 2 epochs
    flat = _ids(batches, [m for step in steps for m in step])
    assert sorted(flat[:5]) == sorted(flat[5:]) == list(range(5))
    assert loader.state_dict()["epoch"] == 1
    assert loader.state_dict()["position"] == 5


def test_a_state_of_other_data_is_refused(make_batches):
    loader = InMemoryLoader(make_batches(3, 1), seed=1)
    state = InMemoryLoader(make_batches(4, 1), seed=1).state_dict()
    with pytest.raises(TrainingError, match="not the same data"):
        loader.load_state_dict(state)


def test_a_source_without_micro_batches_is_an_error():
    class Empty:
        def __iter__(self):
            return iter(())

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

        def upcoming_supervised_targets(self, count):
            return [1] * count

    with pytest.raises(TrainingError, match="Empty yielded no micro-batch in a whole epoch"):
        list(StepBatches(Empty(), per_step=2).next_step())


def test_a_step_plan_announces_counts_and_draws_lazily(make_batches):
    batches = make_batches(3, 1)
    loader = InMemoryLoader(batches, seed=3)
    expected = [supervised_targets(batches[i].batch) for i in [*loader.order(0), *loader.order(1)]]
    plan = StepBatches(loader, per_step=4).next_step()
    assert list(plan.supervised_targets) == expected[:4]
    assert loader.state_dict()["position"] == 0  # nothing drawn yet
    drawn = iter(plan)
    first = next(drawn)
    assert supervised_targets(first.batch) == expected[0]
    assert loader.state_dict()["position"] == 1
    assert [supervised_targets(m.batch) for m in drawn] == expected[1:4]


def test_supervised_targets_count_what_the_model_sums(tiny_model, samples):
    micro_batch = samples.pack(samples.make_samples(4, seed=2))
    with torch.no_grad():
        out = tiny_model(**micro_batch.batch.model_inputs(), return_logits=False)
    assert supervised_targets(micro_batch.batch) == out.num_supervised > 0
    every = samples.make_sample(5, image=False)
    every.labels = every.input_ids.clone()  # every token labelled: the first is no target
    batch = samples.pack([every, every]).batch
    assert supervised_targets(batch) == 2 * (every.input_ids.numel() - 1)


def test_opening_packed_shards_says_the_epochs_of_the_run_and_warns_about_bins_over_budget(
    packed_shards, tiny_model_dir, caplog
):
    import logging

    from ov_model.processor import OVProcessor
    from ov_train.config_io import apply_overrides
    from ov_train.data.bin_order import plan_epoch
    from ov_train.data.bin_table import load_bin_table
    from ov_train.parallel import SingleProcess
    from ov_train.recipes import RECIPES
    from ov_train.source import open_packed_shards

    table = load_bin_table(packed_shards)
    budget = int(table.tokens.max()) - 1
    recipe = apply_overrides(
        RECIPES["stage1-tiny"],
        [
            f"data.path={packed_shards.parent}",  # the prepare folder, not shards/
            f"train.micro_batch_tokens={budget}",
            "train.steps=7",
            "train.grad_accumulation=3",
            "data.num_workers=0",
        ],
    )
    processor = OVProcessor.from_pretrained(tiny_model_dir)
    with caplog.at_level(logging.INFO, logger="ov_train"):
        loader = open_packed_shards(recipe, processor, SingleProcess())
    per_epoch = len(plan_epoch(table.tokens, 0, 0, budget))
    assert loader.micro_batches_in_epoch(0) == per_epoch
    info, warning = caplog.records
    assert info.getMessage() == (
        f"data: {table.num_bins:,} bins, {per_epoch:,} micro-batches of <= {budget:,} tokens per "
        f"epoch; 7 steps x 3 micro-batches = {21 / per_epoch:.2f} epochs"
    )
    over = int((table.tokens > budget).sum())
    assert over >= 1
    assert warning.levelname == "WARNING"
    assert warning.getMessage().startswith(f"data: {over:,} of {table.num_bins:,} bins hold more")
