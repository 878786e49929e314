"""prepare end to end: three input formats with bad samples mixed in, outputs, determinism,
selection, packer rejections, truncation, refusals."""

import json
import pickle
import re
import signal
import subprocess
import sys
from collections import Counter

import msgspec
import pytest

from ov_packing import PackPlan
from ov_packing.shards import iter_bins
from ov_train.data.errors import PrepareError, SourceFileError
from ov_train.data.ingest_llava import LlavaSource
from ov_train.data.manifest import read_manifest
from ov_train.data.measure_units import MeasureTask, UnitRow, plan_units
from ov_train.data.prepare import prepare
from ov_train.data.report import TruncatedSample, load_report
from ov_train.data.sample_record import SampleRecord
from ov_train.data.selection import Selection, ids_file_selector


def _packed_records(shards_dir):
    """(record, {ext: bytes}, bin tokens entry) of every sub-sample in the shards, in order."""
    out = []
    for packed in iter_bins(shards_dir):
        for sample in packed.samples:
            record = msgspec.json.decode(sample.files["json"], type=SampleRecord)
            out.append((record, sample.files, sample.tokens))
    return out


@pytest.fixture
def prepared(tmp_path, raw_corpus, processor, config_for):
    result = prepare(config_for(raw_corpus.inputs, tmp_path / "out"), processor)
    return raw_corpus, result


def test_every_bad_sample_is_reported_with_its_reason(prepared):
    corpus, result = prepared
    report = result.report
    reported = sorted((sample.id, sample.reason) for sample in report.rejected_samples)
    assert reported == sorted(corpus.bad)
    assert report.counts.rejected == len(corpus.bad)
    expected_counts = Counter(reason for _, reason in corpus.bad)
    assert {k: v for k, v in report.counts.rejected_by_reason.items() if v} == expected_counts
    assert set(report.counts.rejected_by_reason) >= {"too_long", "tokens_over_capacity"}
    assert report.counts.rows == len(corpus.good) + len(corpus.bad)


def test_good_samples_are_in_the_shards_exactly_once_with_their_bytes(prepared):
    corpus, result = prepared
    records = _packed_records(result.shards_dir)
    ids = [record.id for record, _, _ in records]
    assert sorted(ids) == sorted(corpus.good)
    for record, files, _ in records:
        conversation, images = corpus.good[record.id]
        assert record.conversation == conversation
        assert [files[ext] for ext in record.images] == images
        assert record.max_length is None
    assert result.report.counts.packed == len(corpus.good)


def test_manifest_has_one_row_per_input_row_with_sizes_and_status(prepared, processor):
    corpus, result = prepared
    rows = list(read_manifest(result.manifest_path))
    assert len(rows) == len(corpus.good) + len(corpus.bad)
    by_id = {row.id: row for row in rows if row.status == "packed"}
    assert set(by_id) == set(corpus.good)
    pair = by_id["llava-pair"]
    assert pair.image_sizes == [(40, 70), (90, 30)]  # (height, width)
    conversation, images = corpus.good["llava-pair"]
    processed = processor(conversation, [_image(data) for data in images])
    assert pair.llm_tokens == processed.input_ids.numel()
    assert pair.vit_patches == int(processed.image_grid_thw.prod(dim=1).sum())
    assert pair.supervised_tokens == processed.num_supervised
    assert pair.text_tokens < pair.llm_tokens
    assert by_id["17"].image_sizes == []
    assert by_id["17"].vit_patches == 0
    rejected = [row for row in rows if row.status == "rejected"]
    assert all(row.key is None and row.llm_tokens is None for row in rejected)
    # The plan's ids are the manifest keys; the bin JSON's token counts are the manifest's.
    plan = PackPlan.load(result.plan_path)
    tokens_by_key = {row.key: row.llm_tokens for row in by_id.values()}
    assert sorted(plan.ids) == sorted(tokens_by_key)
    for packed in iter_bins(result.shards_dir):
        for sample in packed.samples:
            assert sample.tokens == tokens_by_key[sample.id]
            assert sample.tokens <= 160


def test_report_files_describe_the_run(prepared):
    _, result = prepared
    report = load_report(result.out_dir)
    assert report == result.report
    assert report.packing["samples_packed"] == len(list(_packed_records(result.shards_dir)))
    assert report.shards["num_bins"] == report.packing["bins"]
    markdown = (result.out_dir / "report.md").read_text()
    assert "`undecodable_image` (4)" in markdown
    assert "llava-truncated" in markdown
    assert not (result.out_dir / "work").exists()


def _all_bytes(folder):
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


_KILLED_RUN = """
import os, pickle, signal, sys
from ov_model.processor import OVProcessor
from ov_train.data import measure_units
from ov_train.data.prepare import prepare

config, model_dir = pickle.loads(open(sys.argv[1], "rb").read())
run, calls = measure_units.MeasureTask.run, []

def killed_in_the_third_unit(self, unit, staging):
    calls.append(unit.key)
    run(self, unit, staging)  # its outputs staged, not yet committed
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)

measure_units.MeasureTask.run = killed_in_the_third_unit
prepare(config, OVProcessor.from_pretrained(model_dir))
"""


def test_outputs_are_byte_identical_for_1_and_2_workers_and_after_a_kill_and_rerun(
    tmp_path, raw_corpus, processor, config_for, tiny_model_dir
):
    # unit_rows=4: the LLaVA file is 5 units, then 2 tars, 2 parquet files: 9 units
    reference = prepare(config_for(raw_corpus.inputs, tmp_path / "a", unit_rows=4), processor)
    assert reference.measuring.total == 9
    assert len(reference.measuring.done) == 9
    expected = _all_bytes(reference.out_dir)
    assert set(expected) >= {
        "manifest.jsonl",
        "plan.ovp",
        "report.json",
        "report.md",
        "shards/index.json",
        "shards/shard-000000.tar",
    }
    # A run SIGKILLed in the middle of its third unit, then the same job again on 2 workers.
    config = config_for(raw_corpus.inputs, tmp_path / "b", unit_rows=4, workers=2)
    arguments = tmp_path / "arguments.pickle"
    arguments.write_bytes(
        pickle.dumps((config_for(raw_corpus.inputs, tmp_path / "b", unit_rows=4), tiny_model_dir))
    )
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(arguments)], capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "b" / "report.json").exists()
    resumed = prepare(config, processor)
    assert resumed.measuring.skipped == ("m000000", "m000001")
    assert resumed.measuring.done == tuple(f"m{number:06d}" for number in range(2, 9))
    assert resumed.measuring.engine == "local engine, 2 workers"
    assert _all_bytes(resumed.out_dir) == expected


def test_a_damaged_input_stops_the_job_and_a_rerun_keeps_the_finished_units(
    tmp_path, raw_corpus, processor, config_for
):
    lines = tmp_path / "more.jsonl"
    good = json.dumps(
        {
            "id": "more",
            "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hi."}],
        }
    )
    lines.write_text(f"{good}\n{{cut")
    inputs = (*raw_corpus.inputs, LlavaSource(lines))
    out = tmp_path / "out"
    with pytest.raises(SourceFileError, match=rf"^{re.escape(str(lines))}:2: line is not JSON"):
        prepare(config_for(inputs, out), processor)
    assert not (out / "report.json").exists()
    # Another job is refused in the unfinished folder; the same job resumes it.
    with pytest.raises(PrepareError, match="holds an unfinished preparation of other inputs"):
        prepare(config_for(inputs, out, max_length=150), processor)
    lines.write_text(f"{good}\n")
    resumed = prepare(config_for(inputs, out), processor)
    assert resumed.measuring.skipped == tuple(f"m{number:06d}" for number in range(5))
    assert resumed.measuring.done == ("m000005",)
    fresh = prepare(config_for(inputs, tmp_path / "fresh"), processor)
    assert _all_bytes(out) == _all_bytes(fresh.out_dir)
    assert resumed.report.counts.packed == len(raw_corpus.good) + 1
    # A finished preparation is not resumed: it is refused, as any other non-empty folder.
    with pytest.raises(PrepareError, match="is a finished preparation"):
        prepare(config_for(inputs, out), processor)


def test_header_only_mode_misses_truncated_pixels_but_not_garbage(
    tmp_path, raw_corpus, processor, config_for
):
    config = config_for(raw_corpus.inputs, tmp_path / "out", verify_images=False)
    report = prepare(config, processor).report
    reasons = {sample.id: sample.reason for sample in report.rejected_samples}
    assert "llava-truncated" not in reasons
    assert reasons["llava-garbage"] == "undecodable_image"


def test_selection_repeats_drops_and_reports_unknown_ids(
    tmp_path, raw_corpus, processor, config_for
):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("wds-1\nllava-2\nwds-1\n\nwds-1\nllava-missing\nno-such-id\n")
    result = prepare(
        config_for(raw_corpus.inputs, tmp_path / "out"),
        processor,
        select=ids_file_selector(ids_file),
    )
    assert Counter(record.id for record, _, _ in _packed_records(result.shards_dir)) == {
        "wds-1": 3,
        "llava-2": 1,
    }
    rows = {}
    for row in read_manifest(result.manifest_path):
        rows.setdefault(row.id, row)  # the first "llava-0"; the second is a duplicate
    assert rows["wds-1"].status == "packed"
    assert rows["wds-1"].copies == 3
    assert rows["llava-0"].status == "not_selected"
    assert rows["llava-0"].copies == 0
    assert rows["llava-missing"].status == "rejected"
    counts = result.report.counts
    assert (counts.packed, counts.packed_copies) == (2, 4)
    assert counts.not_selected == len(raw_corpus.good) - 2
    selection = result.report.selection
    assert selection["method"] == "ids_file"
    assert selection["ids_not_accepted"] == 2
    assert selection["ids_not_accepted_first"] == ["llava-missing", "no-such-id"]
    assert (
        result.report.tokens.llm_tokens == 3 * rows["wds-1"].llm_tokens + rows["llava-2"].llm_tokens
    )


def test_selection_hook_receives_the_accepted_rows(tmp_path, raw_corpus, processor, config_for):
    seen = []

    def select(rows):
        seen.extend(rows)
        return Selection([row.id for row in rows if row.vit_patches == 0], {"method": "text"})

    result = prepare(config_for(raw_corpus.inputs, tmp_path / "out"), processor, select=select)
    assert {row.id for row in seen} == set(raw_corpus.good)
    assert all(row.status == "packed" and row.key for row in seen)
    assert {record.id for record, _, _ in _packed_records(result.shards_dir)} == {"17", "pq-text"}


def test_packer_rejections_are_reported_per_sample(tmp_path, raw_corpus, processor, config_for):
    rows = {}
    config = config_for(raw_corpus.inputs, tmp_path / "out", patch_capacity=40)
    result = prepare(config, processor)
    rows = {row.id: row for row in read_manifest(result.manifest_path)}
    over = {row_id for row_id, row in rows.items() if row.vit_patches and row.vit_patches > 40}
    assert over  # the two-image sample at least
    for row_id in over:
        assert rows[row_id].status == "rejected"
        assert rows[row_id].reason == "patches_over_capacity"
    assert result.report.counts.rejected_by_reason["patches_over_capacity"] == len(over)
    assert result.report.packing["rejected"]["patches_over_capacity"] == len(over)
    for packed in iter_bins(result.shards_dir):
        assert packed.patches <= 40


def test_truncation_keeps_long_samples_cut_to_max_length(tmp_path, processor, config_for):
    folder = tmp_path / "raw"
    folder.mkdir()
    long_answer = "A red square. " * 80
    rows = [
        {
            "id": "long",
            "conversations": [
                {"from": "human", "value": "What is shown?"},
                {"from": "gpt", "value": long_answer},
            ],
        }
    ]
    rows.append(
        {
            "id": "short",
            "conversations": [
                {"from": "human", "value": "What is shown?"},
                {"from": "gpt", "value": "A red square."},
            ],
        }
    )
    (folder / "data.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    whole = processor.measure(rows[0]["conversations"], []).llm_tokens
    assert whole > 160
    source = LlavaSource(folder / "data.jsonl")
    result = prepare(config_for((source,), tmp_path / "out", truncate=True), processor)
    long_row, short_row = read_manifest(result.manifest_path)
    assert long_row.status == short_row.status == "packed"
    assert long_row.llm_tokens == 160
    assert long_row.truncated_from == whole
    assert short_row.truncated_from is None
    records = {
        record.id: (record, tokens) for record, _, tokens in _packed_records(result.shards_dir)
    }
    assert records["long"][0].max_length == 160
    assert records["long"][1] == 160
    report = result.report
    assert report.counts.truncated == 1
    assert report.truncated_samples == [
        TruncatedSample("long", long_row.source, tokens_before=whole, tokens_after=160)
    ]
    assert load_report(result.out_dir).truncated_samples == report.truncated_samples
    markdown = (result.out_dir / "report.md").read_text()
    assert "## Truncated samples (1)" in markdown
    assert f"| long | {long_row.source} | {whole:,} | 160 |" in markdown
    assert "| truncated (packed, cut to max_length) | 1 |" in markdown


def test_without_truncate_the_long_sample_is_too_long_and_nothing_is_truncated(
    tmp_path, processor, config_for
):
    folder = tmp_path / "raw"
    folder.mkdir()
    row = {
        "id": "long",
        "conversations": [
            {"from": "human", "value": "What is shown?"},
            {"from": "gpt", "value": "A red square. " * 80},
        ],
    }
    (folder / "data.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": "b"}))
    whole = processor.measure(row["conversations"], []).llm_tokens
    config = config_for((LlavaSource(folder / "data.jsonl"),), tmp_path / "out")
    with pytest.raises(PrepareError, match="no sample could be packed"):
        prepare(config, processor)
    report = load_report(tmp_path / "out")
    assert report.counts.truncated == 0
    assert report.truncated_samples == []
    assert report.counts.rejected_by_reason["too_long"] == 2
    assert report.rejected_samples[0].detail == f"{whole} tokens > max_length 160"


def test_refuses_a_non_empty_output_folder_before_reading(
    tmp_path, raw_corpus, processor, config_for
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(PrepareError, match="not empty"):
        prepare(config_for(raw_corpus.inputs, out), processor)
    assert sorted(path.name for path in out.iterdir()) == ["something"]


def test_nothing_packable_still_writes_manifest_and_report(tmp_path, processor, config_for):
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "data.json").write_text(
        json.dumps(
            [
                {
                    "id": "a",
                    "image": "nope.png",
                    "conversations": [
                        {"from": "human", "value": "<image>\nhi"},
                        {"from": "gpt", "value": "x"},
                    ],
                }
            ]
        )
    )
    out = tmp_path / "out"
    with pytest.raises(PrepareError, match="no sample could be packed"):
        prepare(config_for((LlavaSource(folder / "data.json"),), out), processor)
    report = load_report(out)
    assert report.counts.rejected_by_reason["missing_file"] == 1
    assert (out / "manifest.jsonl").is_file()
    assert not (out / "shards").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_length": 0}, "max_length must be a positive integer"),
        ({"capacity": -3}, "capacity must be a positive integer or None"),
        ({"seed": -1}, "seed must be an integer"),
        ({"caption_prompt": "<image> what?"}, "must not contain <image>"),
        ({"engine": "spark"}, "engine must be 'local' or 'ray', got 'spark'"),
        ({"ray_address": "10.0.0.1:6379"}, "ray_address needs engine='ray'"),
        ({"unit_rows": 0}, "unit_rows must be a positive integer"),
    ],
)
def test_config_is_validated_at_construction(tmp_path, raw_corpus, config_for, overrides, message):
    with pytest.raises(PrepareError, match=message):
        config_for(raw_corpus.inputs, tmp_path, **overrides)


def _image(data):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data))


def test_a_worker_started_in_another_folder_reads_relative_inputs_from_the_jobs(
    tmp_path, raw_corpus, processor, config_for, monkeypatch
):
    llava = raw_corpus.inputs[0]
    monkeypatch.chdir(llava.path.parent)
    relative = LlavaSource(llava.path.name, llava.image_root.name)
    config = config_for((relative,), tmp_path / "out")
    processor.save_pretrained(tmp_path / "processor")
    task = MeasureTask.of(config, tmp_path / "processor")
    (unit,) = plan_units(config)
    monkeypatch.chdir(tmp_path)  # where a Ray actor might start
    task.setup()
    task.run(unit, tmp_path / "staging")
    rows = msgspec.msgpack.decode(
        (tmp_path / "staging" / "measure" / "m000000.rows").read_bytes(), type=list[UnitRow]
    )
    assert {row.id for row in rows if row.reason is None} == {
        "llava-0",
        "llava-1",
        "llava-2",
        "llava-3",
        "llava-pair",
        "17",
    }
    assert rows[0].source == "data.json#0"  # named as given
