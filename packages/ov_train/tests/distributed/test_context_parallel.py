"""Context parallelism: the zigzag split and both attention paths (all-gather, ring) against one
process.

- Host tests: the zigzag layout, the block pairs a rank computes (keys wholly in the future
  skipped), the supervised rows mapped to local indices, the error for a row that does not
  split.
- Attention, 2 processes (4 `slow`): per-sample causal attention of a row split over the ranks,
  outputs and gradients of q, k and v against `varlen_attention` over the whole row in one
  process, for rows with samples crossing chunk boundaries, a sample longer than a chunk, empty
  and one-token samples, one sample filling the row, GQA and plain multi-head.
- Training, 2 processes: cp = 2 with each path through the real `train_step` against one
  process on the same global batch (loss equal, gradients rtol 1e-5; also with activation
  checkpointing, and under FSDP2 bf16 against fp32 within bf16's reach); dp_shard 2 x cp 2 on
  4 processes, Stage-1 (frozen LLM) included (`slow`); a 2-process `ov-train run` with ring
  cp = 2 whose loss trace equals one process's.
- GPU: flash-attn's varlen blocks against the fp32 math blocks.
"""

import pytest
import torch

from ov_model.packed_metadata import PackedMetadata
from ov_train.distributed.context_parallel import ContextParallelSplit, zigzag_pieces
from ov_train.distributed.cp_attention import AttentionPlan
from ov_train.errors import TrainingError
from rice_vit import varlen_attention

# (sample lengths, heads, kv heads) of rows of 24 tokens: chunks of 6 with cp = 2, 3 with cp = 4
ROWS = {
    "crossing_and_long": ([5, 9, 3, 7], 4, 2),
    "empty_and_short": ([0, 1, 14, 0, 2, 7], 2, 2),
    "one_sample": ([24], 4, 1),
    "many_short": ([1, 2, 3, 1, 1, 4, 2, 5, 5], 4, 4),
}
HEAD_DIM = 8


def _cu(lengths) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def _row_tensors(lengths, heads, kv_heads, seed=0):
    """q, k, v of the whole row and a weight for the loss sum(out * weight)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(lengths)
    q = torch.randn(tokens, heads, HEAD_DIM, generator=generator)
    k = torch.randn(tokens, kv_heads, HEAD_DIM, generator=generator)
    v = torch.randn(tokens, kv_heads, HEAD_DIM, generator=generator)
    weight = torch.randn(tokens, heads, HEAD_DIM, generator=generator)
    return q, k, v, weight


def _reference(lengths, heads, kv_heads):
    q, k, v, weight = (
        t.requires_grad_(i < 3) for i, t in enumerate(_row_tensors(lengths, heads, kv_heads))
    )
    out = varlen_attention(q, k, v, _cu(lengths), max(lengths), causal=True, backend="sdpa")
    (out * weight).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


# ---------------------------------------------------------------------------------- host tests
def test_zigzag_gives_rank_r_chunks_r_and_its_mirror():
    pieces = zigzag_pieces(16, 2)
    assert pieces.pieces == (((0, 4), (12, 16)), ((4, 8), (8, 12)))
    assert pieces.global_rows(1).tolist() == list(range(4, 12))
    assert zigzag_pieces(24, 3).pieces[2] == ((8, 12), (12, 16))


def test_a_row_not_a_multiple_of_twice_cp_is_an_error_naming_its_length():
    with pytest.raises(TrainingError, match="multiple of 2 \\* cp = 4 tokens; this row has 18"):
        zigzag_pieces(18, 2)


def test_keys_wholly_in_the_future_are_skipped_and_short_samples_skip_more():
    def pairs(lengths, rank):
        plan = AttentionPlan.build(zigzag_pieces(sum(lengths), 2), rank, _cu(lengths))
        return [
            [(p.q_rows.start, p.q_rows.stop, p.k_rows.start, p.k_rows.stop, p.diagonal) for p in s]
            for s in plan.pairs
        ]

    # one sample: rank 0 (chunks 0, 3) computes 5 of its 8 chunk pairs, rank 1 (chunks 1, 2) 3
    assert pairs([16], 0) == [
        [(0, 4, 0, 4, True), (4, 8, 0, 4, False), (4, 8, 4, 8, True)],
        [(4, 8, 0, 4, False), (4, 8, 4, 8, False)],
    ]
    assert pairs([16], 1) == [
        [(0, 4, 0, 4, False), (4, 8, 0, 4, False)],
        [(0, 4, 0, 4, True), (4, 8, 0, 4, False), (4, 8, 4, 8, True)],
    ]
    # samples of 3, 3, 10: the first chunk's samples end inside it; the last sample (rows 6-15)
    # is seen from chunk 3 (rows 12-15) in chunks 1 (rows 6-7 only) and 2
    assert pairs([3, 3, 10], 0) == [
        [(0, 4, 0, 4, True), (4, 8, 4, 8, True)],
        [(4, 8, 2, 4, False), (4, 8, 4, 8, False)],
    ]
    plan = AttentionPlan.build(zigzag_pieces(16, 2), 0, _cu([3, 3, 10]))
    assert plan.pairs[0][0].cu_seqlens == (0, 3, 4)


def test_the_math_path_cuts_diagonal_blocks_at_sample_boundaries(monkeypatch):
    from ov_train.distributed import cp_attention

    monkeypatch.setattr(cp_attention, "MATH_SEGMENT", 2)
    plan = AttentionPlan.build(zigzag_pieces(24, 1), 0, _cu([1, 1, 3, 9, 10]))
    first, second = (pair for pair in plan.pairs[0] if pair.diagonal)
    parts = [(p.q_rows.start, p.q_rows.stop, p.cu_seqlens) for p in plan.math_pairs(first)]
    # segments of >= 2 rows: samples 1 + 1, then 3, then the first 7 rows of the 9
    assert parts == [(0, 2, (0, 1, 2)), (2, 5, (0, 3)), (5, 12, (0, 7))]
    assert [p.cu_seqlens for p in plan.math_pairs(second)] == [(0, 2), (0, 10)]


def test_supervised_rows_map_to_the_local_rows_this_rank_holds():
    ids = torch.arange(16) + 10
    labels = torch.full((16,), -100)
    labels[[2, 5, 6, 13, 14]] = ids[[2, 5, 6, 13, 14]]
    metadata = PackedMetadata.build(ids, labels, _cu([8, 8]))
    assert metadata.supervised_rows.tolist() == [1, 4, 5, 12, 13]  # targets shifted by one
    splits = [ContextParallelSplit(None, rank, 2).split(metadata) for rank in (0, 1)]
    # rank 0 holds rows 0-3 and 12-15 (locally 0-7), rank 1 rows 4-11
    assert splits[0].supervised_rows.tolist() == [1, 4, 5]
    assert splits[0].supervised_targets.tolist() == [12, 23, 24]
    assert splits[1].supervised_rows.tolist() == [0, 1]
    assert splits[1].supervised_targets.tolist() == [15, 16]
    assert splits[0].local(torch.arange(16)).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    with pytest.raises(TrainingError, match="unknown context parallel attention 'flash'"):
        ContextParallelSplit(None, 0, 2, "flash")


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["flash_attn", "torch_flash"])
def test_varlen_kernel_blocks_match_the_fp32_math_blocks_gpu(kernel, monkeypatch):
    """Every rank's blocks of a cp = 2 split, computed in one process (the gathered-K/V autograd
    function without its collective): a varlen flash kernel per block in bf16 (flash-attn's, or
    torch's bundled one), LSE merge and the kernel's varlen backward, against the fp32 math
    blocks (which the process tests below hold to the unsplit row)."""
    from ov_train.distributed import cp_attention
    from ov_train.distributed.cp_attention import _GatheredAttention

    if kernel == "flash_attn":
        pytest.importorskip("flash_attn")
    else:
        monkeypatch.setattr(cp_attention, "_flash_attn_installed", lambda: False)
    for name, (lengths, heads, kv_heads) in ROWS.items():
        pieces = zigzag_pieces(sum(lengths), 2)
        row = [t.cuda() for t in _row_tensors(lengths, heads, kv_heads)]
        _, _, _, weight = row
        for rank in (0, 1):
            plan = AttentionPlan.build(pieces, rank, _cu(lengths))
            held = pieces.global_rows(rank).cuda()
            order = torch.cat([pieces.global_rows(r) for r in (0, 1)]).cuda()
            results = {}
            for dtype in (torch.bfloat16, torch.float32):
                q, k, v = (t.detach().to(dtype, copy=True).requires_grad_() for t in row[:3])
                assert cp_attention.block_kernel(q) == (kernel if dtype != torch.float32 else None)
                out = _GatheredAttention.apply(q[held], k[order], v[order], plan, HEAD_DIM**-0.5)
                (out.float() * weight[held]).sum().backward()
                results[dtype] = [out.float(), q.grad.float(), k.grad.float(), v.grad.float()]
            for got, want in zip(results[torch.bfloat16], results[torch.float32], strict=True):
                torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2, msg=f"{name} {rank}")


# ------------------------------------------------------------------------- attention, processes
def _attention_worker(rank, rows, size):
    import torch.distributed as dist

    from ov_train.distributed import cp_attention

    dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=60))
    group = dist.group.WORLD
    results = {}
    for name, (lengths, heads, kv_heads) in rows.items():
        ids = torch.zeros(sum(lengths), dtype=torch.int64)
        metadata = PackedMetadata.build(ids, None, _cu(lengths))
        for mode, segment in (("allgather", 256), ("ring", 256), ("allgather", 2), ("ring", 3)):
            # small segments: diagonal blocks cut at sample boundaries (AttentionPlan.math_pairs)
            cp_attention.MATH_SEGMENT = segment
            split = ContextParallelSplit(group, rank, size, mode).split(metadata)
            q, k, v, weight = _row_tensors(lengths, heads, kv_heads)
            for t in (q, k, v):
                t.requires_grad_(True)
            # k and v as non-contiguous views: the ring must send contiguous copies (gloo raises
            # on a non-contiguous send and leaves the receiver waiting)
            k_local, v_local = (
                torch.cat([split.local(t)] * 2, dim=-1)[..., :HEAD_DIM] for t in (k, v)
            )
            assert not k_local.is_contiguous()
            out = split.attend(split.local(q), k_local, v_local)
            (out * split.local(weight)).sum().backward()
            grads = [t.grad for t in (q, k, v)]
            for grad in grads:  # each rank's gradient is partial: summed over the cp ranks
                dist.all_reduce(grad)
            held = split.plan.pieces.global_rows(rank)
            results[name, mode, segment] = (held, out.detach(), *grads)
    return results


def _check_attention(results, rows):
    assert {key[1:] for key in results[0]} == {
        (m, s) for m in ("allgather", "ring") for s in (2, 3, 256)
    } - {("allgather", 3), ("ring", 2)}
    for name, (lengths, heads, kv_heads) in rows.items():
        want_out, *want_grads = _reference(lengths, heads, kv_heads)
        for result in results:
            for key, (held, out, *grads) in result.items():
                if key[0] != name:
                    continue
                message = " ".join(map(str, key))
                torch.testing.assert_close(out, want_out[held], rtol=1e-5, atol=1e-6, msg=message)
                for got, want, label in zip(grads, want_grads, "qkv", strict=True):
                    torch.testing.assert_close(
                        got,
                        want,
                        rtol=1e-5,
                        atol=1e-5,
                        msg=lambda m, x=f"{message} d{label}": f"{x}: {m}",
                    )


@pytest.mark.dist
def test_both_attention_paths_match_one_process_on_two_ranks(dist):
    results = dist.run_workers(_attention_worker, 2, ROWS, 2)
    _check_attention(results, ROWS)


@pytest.mark.dist
@pytest.mark.slow
def test_both_attention_paths_match_one_process_on_four_ranks(dist):
    results = dist.run_workers(_attention_worker, 4, ROWS, 4)
    _check_attention(results, ROWS)


# ---------------------------------------------------------------------------- training, processes
STEPS, MICRO_BATCHES = 2, 2


def _cp_rows(dist, samples, seed, cp):
    """A step of MICRO_BATCHES rows of 4 samples (one text-only), padded to a multiple of
    2 x cp as the data path pads them."""
    from ov_model import PRESETS

    return [
        dist.padded_row(
            [samples.make_sample(seed * 100 + row * 10 + i, image=i != 2) for i in range(4)],
            PRESETS["tiny"],
            multiple_of=2 * cp,
        )
        for row in range(MICRO_BATCHES)
    ]


def _tiny_model():
    from ov_model import PRESETS, LlavaOV

    torch.manual_seed(0)
    return LlavaOV(PRESETS["tiny"])


def _cp_recipe(make_recipe, *overrides, data_ranks=1, base="stage2-tiny"):
    return make_recipe(
        "parallel.timeout_s=60",
        "train.clip_grad_norm=0",
        "train.dtype=fp32",
        f"train.grad_accumulation={MICRO_BATCHES * data_ranks}",
        *overrides,
        base=base,
    )


def _training_worker(rank, dist, recipes, step_batches):
    from ov_train.parallel import init_world

    runs = {}
    for name, recipe in recipes.items():
        world = init_world(recipe.parallel, "cpu")
        facts = {"cp_rank": world.coordinate("cp"), "data_rank": world.data_rank}
        runs[name] = {**dist.train_distributed(_tiny_model, recipe, step_batches), **facts}
    return runs


@pytest.mark.dist
def test_cp2_with_either_attention_trains_like_one_process(dist, make_recipe, samples):
    step_batches = [_cp_rows(dist, samples, seed, cp=2) for seed in range(STEPS)]
    assert all(b.batch.input_ids.numel() % 4 == 0 for step in step_batches for b in step)
    assert max(b.batch.input_ids.numel() for step in step_batches for b in step) > 80
    recipes = {
        mode: _cp_recipe(make_recipe, "parallel.cp=2", f"parallel.cp_attention={mode}")
        for mode in ("allgather", "ring")
    }
    recipes["ring_checkpointed"] = _cp_recipe(
        make_recipe,
        "parallel.cp=2",
        "parallel.cp_attention=ring",
        "parallel.activation_checkpointing=full",
    )
    recipes["ring_bf16"] = _cp_recipe(  # FSDP2 gathers bf16 weights: bf16 q/k/v reach the blocks
        make_recipe, "parallel.cp=2", "parallel.cp_attention=ring", "train.dtype=bf16"
    )
    results = dist.run_workers(_training_worker, 2, dist, recipes, step_batches)
    reference = dist.train_one_process(_tiny_model, _cp_recipe(make_recipe), step_batches)
    for rank, result in enumerate(results):
        for name, run in result.items():
            assert (run["cp_rank"], run["data_rank"]) == (rank, 0), name
            if name == "ring_bf16":
                assert run["losses"] != reference["losses"]  # the forward did run in bf16
                assert run["losses"] == pytest.approx(reference["losses"], rel=2e-2)
                for got, want in zip(run["gradients"], reference["gradients"], strict=True):
                    assert dist.cosine(got, want) >= 0.999
            else:
                dist.assert_same_training(run, reference, learning_rates=False, parameters=False)


@pytest.mark.dist
@pytest.mark.slow
def test_fsdp2_times_cp2_on_four_processes_trains_like_one_process(dist, make_recipe, samples):
    step_batches = [_cp_rows(dist, samples, seed, cp=2) * 2 for seed in range(STEPS)]
    recipes = {
        mode: _cp_recipe(
            make_recipe, "parallel.cp=2", f"parallel.cp_attention={mode}", data_ranks=2
        )
        for mode in ("allgather", "ring")
    }
    recipes["stage1_ring"] = _cp_recipe(  # frozen LLM: gradients reach the projector through it
        make_recipe, "parallel.cp=2", "parallel.cp_attention=ring", data_ranks=2, base="stage1-tiny"
    )
    results = dist.run_workers(_training_worker, 4, dist, recipes, step_batches)
    references = {
        base: dist.train_one_process(
            _tiny_model, _cp_recipe(make_recipe, data_ranks=2, base=base), step_batches
        )
        for base in ("stage2-tiny", "stage1-tiny")
    }
    for result in results:
        for name, run in result.items():
            reference = references["stage1-tiny" if "stage1" in name else "stage2-tiny"]
            dist.assert_same_training(run, reference, learning_rates=False, parameters=False)
        assert set(result["stage1_ring"]["gradients"][0]) == {
            name for name in references["stage1-tiny"]["gradients"][0]
        }
        assert all(n.startswith("projector.") for n in result["stage1_ring"]["gradients"][0])


# --------------------------------------------------------------------- ov-train run, processes
@pytest.mark.dist
def test_a_two_process_ring_cp_run_has_the_loss_trace_of_one_process(
    dist, packed_shards, tiny_model_dir, tmp_path
):
    """`ov-train run` end to end: the loader pads every row to a multiple of 4 and both cp
    ranks read the same micro-batches; metrics.jsonl's losses equal one process's."""
    from ov_train.commands import run_command

    one, two = tmp_path / "one", tmp_path / "cp2"
    run_command.main(dist.run_args(packed_shards, one, tiny_model_dir), standalone_mode=False)
    cp = ("parallel.cp=2", "parallel.dp_shard=1", "parallel.cp_attention=ring")
    dist.run_workers(
        dist.run_cli, 2, dist.run_args(packed_shards, two, tiny_model_dir, *cp), timeout_s=180
    )
    assert "cp = 2" in (two / "recipe.toml").read_text()
    dist.assert_same_loss_trace(two, one, steps=STEPS, rel=1e-5)
