"""`ov-train plan-parallel`: the per-rank formula against the real `parallelize` on a fake process
group, what tp / sp / cp / pp divide, the pipeline's in-flight micro-batches, communication in
closed form, the days, the release's Stage-1.5 line, and errors that name the problem."""

import dataclasses
import re

import pytest
from click.testing import CliRunner

from ov_model.config import PRESETS
from ov_train.cli import main
from ov_train.config_io import resolve_recipe
from ov_train.errors import RecipeError
from ov_train.memory_estimate import (
    GIB,
    Layout,
    Workload,
    activation_bytes,
    decoder_layer_saved,
    estimate_memory,
    layer_bytes_per_token,
    parameter_counts,
    rank_parameters,
)
from ov_train.plan_parallel import (
    Hardware,
    communication_per_step,
    micro_batch_flops,
    plan_parallel,
)
from ov_train.plan_parallel_command import RELEASE_STAGE1_5

EIGHT_B, FOUR_B = PRESETS["8b"], PRESETS["4b"]
WORKLOAD = Workload(micro_batch_tokens=8192)


def _recipe(name: str, *overrides: str):
    return resolve_recipe(name, overrides)


# ------------------------------------------------------------------ the dry run vs the formula
@pytest.mark.parametrize(
    ("name", "gpus", "overrides"),
    [
        ("stage1_5-8b", 8, ()),
        ("stage2-8b", 32, ("parallel.tp=4", "parallel.cp=2", "parallel.dp_replicate=2")),
        ("stage1_5-4b", 16, ("parallel.pp=2", "parallel.tp=2", "parallel.sequence_parallel=false")),
    ],
)
def test_dry_run_shards_equal_the_formula_on_every_pipeline_rank(name, gpus, overrides):
    plan = plan_parallel(_recipe(name, *overrides), gpus)
    for rank in plan.ranks:
        # the formula ignores FSDP2's rounding of uneven shards: one row per tensor at most
        assert rank.sharded_parameters == pytest.approx(rank.formula_parameters, rel=1e-5)


def test_tensor_parallel_splits_the_decoder_and_vocabulary_not_the_vit():
    one = rank_parameters(EIGHT_B, Layout(world_size=1))
    four = rank_parameters(EIGHT_B, Layout(world_size=4, tp=4))
    text = EIGHT_B.text
    norms = 2 * text.hidden_size + 2 * text.head_dim
    assert four.decoder_layer - norms == (one.decoder_layer - norms) / 4
    assert four.root - text.hidden_size == (one.root - text.hidden_size) / 4
    assert (four.vision, four.projector) == (one.vision, one.projector)


def test_pipeline_ranks_hold_their_stages_and_together_the_whole_model():
    layout = Layout(world_size=4, pp=4, pp_layers=(6, 10, 10, 10))
    ranks = [rank_parameters(EIGHT_B, layout, r) for r in range(4)]
    assert [r.layers for r in ranks] == [6, 10, 10, 10]
    assert ranks[0].vision > 0
    assert all(r.vision == 0 for r in ranks[1:])
    assert sum(r.total for r in ranks) == parameter_counts(EIGHT_B).total
    # the V schedule puts the first and the last stage on rank 0
    vee = Layout(world_size=2, pp=2, pp_schedule="ZBVZeroBubble", pp_stages_per_rank=2)
    assert vee.rank_stages(0) == (0, 3)
    assert vee.rank_stages(1) == (1, 2)
    assert rank_parameters(EIGHT_B, vee, 0).root == parameter_counts(EIGHT_B).root
    # an even split gives the remainder to the stages after the first (it also runs the ViT)
    assert Layout(world_size=5, pp=5).stage_layers(36) == (7, 8, 7, 7, 7)


@pytest.mark.parametrize(
    "overrides",
    [
        ("parallel.pp=5",),
        ("parallel.pp=4", "parallel.pp_schedule=Interleaved1F1B", "parallel.pp_stages_per_rank=2"),
        ("parallel.pp=2", "parallel.pp_schedule=ZBVZeroBubble", "parallel.pp_stages_per_rank=2"),
        ("parallel.pp=2", "parallel.pp_layers=[14, 22]"),
    ],
)
def test_stages_are_the_ones_the_pipeline_builds(overrides):
    from ov_train.distributed.pipeline_plan import stage_plans

    parallel = _recipe("stage1_5-8b", *overrides).parallel
    layout = Layout.from_parallel(parallel, parallel.pp)
    counts = layout.stage_layers(EIGHT_B.text.num_hidden_layers)
    for pp_rank in range(parallel.pp):
        plans = stage_plans(parallel, EIGHT_B, pp_rank)
        assert [plan.index for plan in plans] == list(layout.rank_stages(pp_rank))
        assert [len(plan.layers) for plan in plans] == [counts[p.index] for p in plans]


# ------------------------------------------------------------------ activations
def test_sequence_and_context_parallel_divide_the_decoder_activations_as_documented():
    saved = decoder_layer_saved(EIGHT_B.text)
    one = layer_bytes_per_token(saved, 2, Layout())
    by_split = {
        split: sum(s.bytes_per_token(2) for s in saved if s.split == split)
        for split in ("sequence", "gathered", "tensor", "kv")
    }
    assert sum(by_split.values()) == one
    tp = layer_bytes_per_token(saved, 2, Layout(world_size=4, tp=4))
    assert tp == pytest.approx(
        (by_split["sequence"] + by_split["tensor"] + by_split["kv"]) / 4 + by_split["gathered"]
    )
    no_sp = layer_bytes_per_token(saved, 2, Layout(world_size=4, tp=4, sequence_parallel=False))
    assert no_sp - tp == pytest.approx(by_split["sequence"] * 3 / 4)
    ring = layer_bytes_per_token(saved, 2, Layout(world_size=4, cp=4, cp_attention="ring"))
    assert ring == pytest.approx(one / 4)  # every saved tensor is per local token
    gather = layer_bytes_per_token(saved, 2, Layout(world_size=4, cp=4))
    assert gather - ring == pytest.approx(by_split["kv"] * 3 / 4)  # the whole row's k and v


def test_context_parallel_leaves_the_vit_whole_and_cuts_the_llm():
    one = activation_bytes(EIGHT_B, WORKLOAD, Layout())
    two = activation_bytes(EIGHT_B, WORKLOAD, Layout(world_size=2, cp=2, cp_attention="ring"))
    assert two.vision == one.vision
    assert two.projector == one.projector
    assert two.language_model == pytest.approx(one.language_model / 2, rel=1e-6)
    assert two.head == pytest.approx(one.head / 2, abs=1)


@pytest.mark.parametrize("pp", [2, 4])
def test_1f1b_holds_pp_minus_rank_micro_batches_capped_by_the_step(pp):
    layout = Layout(world_size=pp, pp=pp, micro_batches=8)
    assert [layout.in_flight(r) for r in range(pp)] == [pp - r for r in range(pp)]
    few = Layout(world_size=pp, pp=pp, micro_batches=1)
    assert [few.in_flight(r) for r in range(pp)] == [1.0] * pp
    first = activation_bytes(EIGHT_B, WORKLOAD, layout, pp_rank=0)
    alone = activation_bytes(EIGHT_B, WORKLOAD, few, pp_rank=0)
    assert first.held == pytest.approx(pp * alone.held, rel=1e-6)


def test_interleaving_holds_megatrons_extra_share_on_rank_0():
    pp, chunks = 4, 2
    layout = Layout(
        world_size=pp,
        pp=pp,
        pp_schedule="Interleaved1F1B",
        pp_stages_per_rank=chunks,
        micro_batches=16,
    )
    # Korthikanti et al. 2022: pp x (1 + (pp - 1) / (pp x chunks)) micro-batches on rank 0
    assert layout.in_flight(0) == pytest.approx(pp * (1 + (pp - 1) / (pp * chunks)))
    assert layout.in_flight(pp - 1) < layout.in_flight(0)


def test_interleaved_peak_follows_the_schedule_order_and_the_heavier_chunk():
    layout = Layout(
        world_size=2,
        pp=2,
        pp_schedule="Interleaved1F1B",
        pp_stages_per_rank=2,
        micro_batches=4,
    )
    # equal chunks: the warm-up's 4 forwards and the first steady one
    assert layout.in_flight_stages(0) == {0: 3, 2: 2}
    # a heavy first chunk (the ViT): later, chunk 0's forwards outrun its backwards
    assert layout.in_flight_stages(0, {0: 10.0, 2: 1.0}) == {0: 4, 2: 1}
    assert layout.in_flight_stages(1) == {1: 2, 3: 1}


def test_a_pipeline_without_data_parallelism_is_estimated_unwrapped():
    alone = Layout(world_size=2, pp=2, micro_batches=2)
    assert not alone.wrapped
    assert Layout(world_size=4, pp=2, dp_shard=2, micro_batches=2).wrapped
    first = estimate_memory(EIGHT_B, WORKLOAD, alone, pp_rank=0)
    rank = first.rank_parameters
    assert first.parameters == 4 * rank.total  # fp32, not sharded
    assert first.gathered == 2 * (rank.total - parameter_counts(EIGHT_B).embedding)


# ------------------------------------------------------------------ communication and compute
def test_fsdp_traffic_is_two_gathers_and_one_reduce_scatter_per_micro_batch():
    layout = Layout(world_size=8, dp_shard=8, micro_batches=3)
    sent = communication_per_step(EIGHT_B, WORKLOAD, layout)
    total = parameter_counts(EIGHT_B).total
    root = parameter_counts(EIGHT_B).root
    assert sent.fsdp_all_gather == pytest.approx(3 * 2 * (2 * total - root) * 7 / 8)
    assert sent.fsdp_reduce_scatter == pytest.approx(3 * 4 * total * 7 / 8)
    assert sent.tensor_parallel == sent.context_parallel == sent.pipeline == 0
    hsdp = communication_per_step(
        EIGHT_B, WORKLOAD, Layout(world_size=16, dp_replicate=2, dp_shard=8, micro_batches=3)
    )
    assert hsdp.replica_all_reduce == pytest.approx(2 * 0.5 * 4 * total / 8)
    assert communication_per_step(EIGHT_B, WORKLOAD, Layout()).total == 0


def test_only_groups_wider_than_a_node_send_between_nodes():
    def between(**layout):
        sent = communication_per_step(EIGHT_B, WORKLOAD, Layout(micro_batches=4, **layout))
        return sent, sent.between_nodes

    fsdp, crossing = between(world_size=128, dp_shard=128)
    assert crossing == fsdp.total  # one FSDP group over 16 nodes
    hsdp, crossing = between(world_size=128, dp_replicate=16, dp_shard=8)
    assert crossing == hsdp.replica_all_reduce > 0  # shards gathered inside each node
    tp, crossing = between(world_size=128, dp_shard=16, tp=8)
    assert crossing == tp.fsdp_all_gather + tp.fsdp_reduce_scatter  # tp 8 fills a node
    node, crossing = between(world_size=8, dp_shard=4, tp=2)
    assert crossing == 0
    assert node.total > 0


def test_tensor_context_and_pipeline_traffic_grow_with_their_degree():
    def sent(**layout):
        world = layout.get("tp", 1) * layout.get("cp", 1) * layout.get("pp", 1)
        return communication_per_step(EIGHT_B, WORKLOAD, Layout(world_size=world, **layout))

    hidden = 8192 * EIGHT_B.text.hidden_size * 2
    layers = EIGHT_B.text.num_hidden_layers
    # 8 collectives per layer, 3 for the embedding, 2 over the 4096 supervised rows
    expected = (8 * layers + 3) * hidden / 2 + 2 * 4096 * EIGHT_B.text.hidden_size * 2 / 2
    assert sent(tp=2).tensor_parallel == pytest.approx(expected)
    assert sent(tp=4).tensor_parallel == pytest.approx(expected * 1.5)
    assert sent(cp=2, cp_attention="ring").context_parallel > sent(cp=2).context_parallel > 0
    # a pipeline alone runs without FSDP2: fp32 states under autocast
    assert sent(pp=4).pipeline == pytest.approx(2 * hidden)  # rank 0: its output, forward only
    layout = Layout(world_size=8, pp=4, dp_shard=2)
    middle = communication_per_step(EIGHT_B, WORKLOAD, layout, pp_rank=1)
    assert middle.pipeline == pytest.approx(2 * hidden)  # output forward, input grad backward
    sequence = Layout(world_size=16, pp=4, dp_shard=2, tp=2)
    shared = communication_per_step(EIGHT_B, WORKLOAD, sequence, pp_rank=1)
    assert shared.pipeline == pytest.approx(hidden)  # a tp rank's share of the tokens


def test_days_follow_from_flops_tokens_gpus_and_mfu():
    recipe = _recipe("stage1_5-8b")
    hardware = Hardware(mfu=0.5, peak_tflops=100)
    plan = plan_parallel(recipe, 8, hardware=hardware, measure=False)
    per_token = micro_batch_flops(EIGHT_B, WORKLOAD).total / 8192
    assert plan.days(1e9) == pytest.approx(1e9 * per_token / (8 * 100e12 * 0.5) / 86400)
    assert plan.implied_mfu(1e9, plan.days(1e9)) == pytest.approx(0.5)
    # about 6 x parameters per token, plus attention
    assert 6 * parameter_counts(EIGHT_B).total < per_token < 7 * parameter_counts(EIGHT_B).total


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("overrides", "gpus", "message"),
    [
        (("parallel.tp=2", "parallel.dp_shard=3"), 8, "but the run has 8"),
        (("parallel.tp=3",), 6, "32 attention heads are not divisible"),
        (("parallel.pp=37",), 37, "37 pipeline stages"),
        (("parallel.pp=2", "parallel.pp_layers=[10, 20]"), 2, "sum to 30"),
        ((), 16, "grad_accumulation .* not divisible by the 16 data-parallel ranks"),
        (
            (
                "parallel.pp=2",
                "parallel.pp_schedule=InterleavedZeroBubble",
                "parallel.pp_stages_per_rank=2",
            ),
            4,
            "InterleavedZeroBubble with FSDP2 needs parallel.reshard_after_forward = false",
        ),
    ],
)
def test_bad_layouts_are_refused_naming_the_problem(overrides, gpus, message):
    with pytest.raises(RecipeError, match=message):
        plan_parallel(_recipe("stage1_5-8b", *overrides), gpus, measure=False)


def test_a_zero_bubble_schedule_under_fsdp_plans_when_it_keeps_parameters_gathered():
    overrides = (
        "parallel.pp=2",
        "parallel.pp_schedule=InterleavedZeroBubble",
        "parallel.pp_stages_per_rank=2",
        "parallel.reshard_after_forward=false",
    )
    plan = plan_parallel(_recipe("stage1_5-8b", *overrides), 4, measure=False)
    assert plan.shape == (2, 1, 2, 1, 1)
    assert len(plan.ranks) == 2  # one per pipeline rank


def test_layout_errors_name_the_degrees():
    with pytest.raises(RecipeError, match="pp 1 x dp_replicate 1 x dp_shard 2 x cp 1 x tp 2 = 4"):
        Layout(world_size=8, dp_shard=2, tp=2)
    with pytest.raises(RecipeError, match="must list 2 stages"):
        Layout(world_size=2, pp=2, pp_layers=(36,)).stage_layers(36)


# ------------------------------------------------------------------ the command
def _invoke(*args: str):
    return CliRunner().invoke(main, ["plan-parallel", *args])


def _row(output: str, label: str) -> list[str]:
    lines = [line.strip() for line in output.splitlines() if line.strip().startswith(label)]
    assert len(lines) == 1, output
    return lines[0][len(label) :].split()


def test_help_explains_every_flag_with_its_default():
    result = _invoke("--help")
    assert result.exit_code == 0
    for flag in (
        "--gpus",
        "--set",
        "--gpu-memory-gib",
        "--peak-tflops",
        "--mfu",
        "--tokens",
        "--image-fraction",
        "--tokens-per-image",
        "--supervised-fraction",
        "--dry-run",
        "--release-stage1-5",
    ):
        assert flag in result.output
    text = " ".join(result.output.split())
    assert "[default: 0.4;" in text
    assert "[default: 312.0;" in text
    assert "[default: (64e9" in text


def test_command_prints_one_column_per_world_size_and_pipeline_rank():
    both = _invoke(
        "stage1_5-8b", "--gpus", "8", "--gpus", "16", "--set", "train.grad_accumulation=32",
        "--no-dry-run",
    )  # fmt: skip
    assert both.exit_code == 0, both.output
    assert _row(both.output, "micro-batches per rank per step") == ["4", "2"]
    assert _row(both.output, "mesh pp/dp_rep/dp_shard/cp/tp") == ["1/1/8/1/1", "1/1/16/1/1"]
    result = _invoke(
        "stage1_5-8b", "--gpus", "16", "--set", "parallel.pp=2", "--set", "parallel.tp=2",
        "--no-dry-run",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _row(result.output, "mesh pp/dp_rep/dp_shard/cp/tp") == ["2/1/4/1/2", "1F1B"] * 2
    plan = plan_parallel(
        _recipe("stage1_5-8b", "parallel.pp=2", "parallel.tp=2"), 16, measure=False
    )
    totals = _row(result.output, "total per GPU")
    assert totals == [f"{rank.memory.total / GIB:.1f}" for rank in plan.ranks]
    assert _row(result.output, "micro-batches in flight") == ["2", "1"]
    assert _row(result.output, "parameters, M (dry run)") == ["-", "-"]
    assert _row(result.output, "days for 64B tokens") == [f"{plan.days(64e9):.2f}"] * 2
    assert result.output.splitlines()[2].split()[-2:] == ["GPUs", "pp1"]


def test_release_stage1_5_is_printed_next_to_its_3_7_days():
    result = _invoke("--release-stage1-5", "--no-dry-run")
    assert result.exit_code == 0, result.output
    assert _row(result.output, "mesh pp/dp_rep/dp_shard/cp/tp") == ["2/1/64/1/1", "1F1B"] * 2
    match = re.search(r"release: 3.7 days; this plan: ([\d.]+) days at MFU 0.40", result.output)
    assert match, result.output
    recipe = _recipe(RELEASE_STAGE1_5.recipe, *RELEASE_STAGE1_5.overrides)
    plan = plan_parallel(recipe, 128, measure=False)
    assert float(match.group(1)) == pytest.approx(plan.days(64e9), abs=0.01)
    implied = float(re.search(r"imply MFU ([\d.]+)", result.output).group(1))
    assert implied == pytest.approx(0.4 * plan.days(64e9) / 3.7, abs=0.01)
    assert plan.fits
    assert "Assumed" in result.output


def test_command_errors_are_one_line_without_traceback():
    result = _invoke("stage1_5-8b", "--gpus", "6", "--set", "parallel.tp=4")
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "parallel" in result.output
    missing = _invoke()
    assert missing.exit_code != 0
    assert "give a RECIPE" in missing.output
    both = _invoke("stage2-4b", "--release-stage1-5")
    assert both.exit_code != 0
    assert "drop RECIPE (stage2-4b)" in both.output


def test_estimate_memory_is_the_plans_memory_without_model_parallelism():
    recipe = _recipe("stage2-8b")
    plan = plan_parallel(recipe, 8, measure=False)
    layout = Layout(world_size=8, dp_shard=8, activation_checkpointing="full")
    direct = estimate_memory(EIGHT_B, Workload(micro_batch_tokens=32768), layout)
    assert dataclasses.replace(plan.ranks[0].memory, layout=layout) == dataclasses.replace(
        direct, layout=layout
    )
