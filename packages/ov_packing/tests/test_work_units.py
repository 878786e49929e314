"""Resumable work units (`ov_packing.work_units`): killed and resumed jobs, worker counts, tampered
outputs and failing units, all checked byte for byte against an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from ov_packing.work_units import (
    JobMismatch,
    LocalEngine,
    RayEngine,
    UnitFailed,
    WorkUnit,
    WorkUnitError,
    make_engine,
    run_units,
    unit_digest,
)

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # spawned workers find ov_packing_unit_tasks (sys.path is passed)
from ov_packing_unit_tasks import ChainTask, chain_units  # noqa: E402


def tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def run(out: Path, workers: int = 1, units=None, engine=None, **kwargs):
    if engine is None:
        with LocalEngine(workers) as own:
            return run(out, units=units, engine=own, **kwargs)
    return run_units(
        kwargs.pop("task", ChainTask()),
        chain_units(12) if units is None else units,
        out,
        engine=engine,
        job_digest=kwargs.pop("job_digest", "chain-job"),
        progress=kwargs.pop("progress", False),
        **kwargs,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    """An uninterrupted run with one worker (inline)."""
    out = tmp_path_factory.mktemp("reference")
    report = run(out)
    assert report.done == tuple(f"u-{n:04d}" for n in range(12))
    assert report.skipped == ()
    assert report.redone == ()
    return tree(out)


def test_outputs_and_records(reference):
    assert sorted(reference) == sorted(
        [f"part-{n:04d}.bin" for n in range(12)]
        + [f"meta/part-{n:04d}.txt" for n in range(12)]
        + [f".units/u-{n:04d}.json" for n in range(12)]
        + [".units/job.json"]
    )
    assert len(reference["part-0003.bin"]) == 3003
    record = msgspec.json.decode(reference[".units/u-0003.json"])
    unit = chain_units(12)[3]
    assert record["unit_digest"] == unit_digest(unit)
    assert record["job_digest"] == "chain-job"
    import hashlib

    assert record["outputs"]["part-0003.bin"] == {
        "bytes": 3003,
        "sha256": hashlib.sha256(reference["part-0003.bin"]).hexdigest(),
    }


def test_two_workers_give_the_same_bytes_and_a_rerun_skips_everything(tmp_path, reference):
    with LocalEngine(2) as engine:  # one pool for both runs
        report = run_units(
            ChainTask(),
            chain_units(12),
            tmp_path,
            engine=engine,
            job_digest="chain-job",
            progress=False,
        )
        assert report.done == tuple(f"u-{n:04d}" for n in range(12))  # in unit order
        assert tree(tmp_path) == reference
        (tmp_path / "part-0004.bin").unlink()
        again = run_units(
            ChainTask(),
            chain_units(12),
            tmp_path,
            engine=engine,
            job_digest="chain-job",
            progress=False,
        )
        assert again.done == ("u-0004",)
    assert tree(tmp_path) == reference
    again = run(tmp_path, workers=2)
    assert again.done == ()
    assert len(again.skipped) == 12
    assert again.redone == ()
    assert "12 units: 0 run, 12 already done" in again.summary()
    assert tree(tmp_path) == reference


def test_sigkill_mid_job_then_rerun_is_byte_identical(tmp_path, reference):
    out = tmp_path / "job"
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import ov_packing_unit_tasks as t; "
        f"t.main({str(out)!r}, 2, 0.15)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            records = list((out / ".units").glob("u-*.json")) if out.exists() else []
            if len(records) >= 4:
                break
            assert process.poll() is None, "the job ended before it could be killed"
            time.sleep(0.01)
        else:
            pytest.fail("the job wrote no 4 records in 60 s")
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the job and its spawned workers
        process.wait()
    finished = {path.stem for path in (out / ".units").glob("u-*.json")}
    assert 4 <= len(finished) < 12
    assert tree(out) != reference  # interrupted: units missing, or one staged half-way
    report = run(out)
    assert set(report.skipped) == finished
    assert set(report.done) == {f"u-{n:04d}" for n in range(12)} - finished
    assert report.redone == ()
    assert tree(out) == reference
    assert not (out / ".staging").exists()


def test_a_tampered_or_missing_output_is_redone_and_reported(tmp_path, reference):
    run(tmp_path)
    flipped = bytearray((tmp_path / "part-0003.bin").read_bytes())
    flipped[100] ^= 1
    (tmp_path / "part-0003.bin").write_bytes(bytes(flipped))
    (tmp_path / "meta/part-0005.txt").unlink()
    (tmp_path / "part-0007.bin").write_bytes(reference["part-0007.bin"] + b"x")
    (tmp_path / ".units/u-0009.json").write_bytes(b'{"key": "u-00')  # torn record
    (tmp_path / ".units/u-0010.json").unlink()  # killed after the outputs, before the record
    report = run(tmp_path)
    assert report.done == ("u-0003", "u-0005", "u-0007", "u-0009", "u-0010")
    assert report.redone == ("u-0003", "u-0005", "u-0007", "u-0009")
    assert report.reasons["u-0003"] == "part-0003.bin SHA-256 differs from the record"
    assert report.reasons["u-0005"] == "meta/part-0005.txt missing"
    assert report.reasons["u-0007"] == "part-0007.bin is 3008 bytes, recorded 3007"
    assert report.reasons["u-0009"].startswith("record u-0009.json unreadable")
    assert "4 redone because their output changed (u-0003: part-0003.bin SHA-256" in (
        report.summary()
    )
    assert tree(tmp_path) == reference


@pytest.mark.parametrize("workers", [1, 2])
def test_an_exception_names_the_unit_and_keeps_finished_units(tmp_path, reference, workers):
    message = r"work unit 'u-0002' failed: ValueError: cannot make"
    with LocalEngine(workers) as engine:  # one pool for the failing run and the rerun
        with pytest.raises(UnitFailed, match=message) as e:
            run(tmp_path, engine=engine, task=ChainTask(fail_key="u-0002"))
        assert e.value.key == "u-0002"
        assert isinstance(e.value.error, ValueError)
        assert e.value.__cause__ is e.value.error
        finished = {path.stem for path in (tmp_path / ".units").glob("u-*.json")}
        assert {"u-0000", "u-0001"} <= finished
        assert "u-0002" not in finished
        assert len(finished) < 11  # no new unit started after the failure
        report = run(tmp_path, engine=engine)
        assert set(report.skipped) == finished
        assert "u-0002" in report.done
        assert tree(tmp_path) == reference


def test_another_jobs_directory_is_refused(tmp_path):
    run(tmp_path, units=chain_units(2))
    with pytest.raises(JobMismatch, match="holds the units of another job"):
        run(tmp_path, units=chain_units(2), job_digest="other-job")


def test_a_changed_unit_is_redone(tmp_path):
    run(tmp_path, units=chain_units(2))
    units = chain_units(2)
    units[1] = WorkUnit(key=units[1].key, outputs=units[1].outputs, params=b"\x92\x05\x19")
    report = run(tmp_path, units=units)
    assert report.done == ("u-0001",)
    assert report.reasons == {"u-0001": "record of another version of the unit"}


@pytest.mark.parametrize(
    ("units", "message"),
    [
        ([WorkUnit("a", ("x",)), WorkUnit("a", ("y",))], "key 'a' is used by another unit"),
        ([WorkUnit("a/b", ("x",))], "key 'a/b' is not filename-safe"),
        ([WorkUnit(".a", ("x",))], "key '.a' is not filename-safe"),
        ([WorkUnit("job", ("x",))], "key 'job' is not filename-safe"),
        ([WorkUnit("a", ("../x",))], r"output '../x' has an empty, '.' or '..' component"),
        ([WorkUnit("a", ("/x",))], "output '/x' is not a relative POSIX path"),
        ([WorkUnit("a", (".units/x",))], "inside the bookkeeping folder"),
        ([WorkUnit("a", ())], "unit 'a' declares no outputs"),
        ([WorkUnit("a", ("x",)), WorkUnit("b", ("x",))], "'a' and 'b' both declare the output"),
    ],
)
def test_bad_units_are_refused_before_anything_runs(tmp_path, units, message):
    with pytest.raises(WorkUnitError, match=message):
        run(tmp_path, units=units)
    assert not (tmp_path / ".units").exists()


class _Writes:
    def __init__(self, names):
        self.names = names

    def setup(self):
        pass

    def run(self, unit, staging):
        for name in self.names:
            (staging / name).write_bytes(b"1")


def test_a_unit_must_write_exactly_its_outputs(tmp_path):
    unit = WorkUnit("a", ("x", "y"))
    with pytest.raises(UnitFailed, match="did not write its output 'y'"):
        run(tmp_path, units=[unit], task=_Writes(["x"]))
    with pytest.raises(UnitFailed, match=r"wrote files it does not declare: \['z'\]"):
        run(tmp_path, units=[unit], task=_Writes(["x", "y", "z"]))
    assert not (tmp_path / "x").exists()  # nothing moved into place


def test_progress_callback_counts_skipped_units_first(tmp_path):
    run(tmp_path, units=chain_units(3)[:2])
    calls = []
    run(tmp_path, units=chain_units(3), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 3), (3, 3)]


def test_make_engine():
    assert make_engine("local", 3).workers == 3
    engine = make_engine("ray", None, "10.0.0.1:6379", num_gpus_per_unit=1)
    assert isinstance(engine, RayEngine)
    assert (engine.address, engine.num_gpus_per_unit, engine.actors) == ("10.0.0.1:6379", 1, None)
    with pytest.raises(ValueError, match="unknown engine 'dask'"):
        make_engine("dask")
    with pytest.raises(ValueError, match="workers must be at least 1"):
        LocalEngine(0)
