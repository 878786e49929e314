"""Resumable work units: a long job as independent units, each written atomically, run by an engine.

A job is a list of `WorkUnit`s and a `UnitTask` that turns one unit into files. `run_units` runs the
units that are not finished yet on an engine (`LocalEngine`: this process or a pool of processes;
`RayEngine`: actors of a Ray cluster) and writes, for every unit it finishes, a record:

    out_dir/.units/job.json          {"format": "ov-work-units", "version": 1, "job_digest"}
    out_dir/.units/<key>.json        {"key", "job_digest", "unit_digest",
                                      "outputs": {relative path: {"bytes", "sha256"}}}
    out_dir/.staging/<key>/...       a unit being written (removed when it is committed)

A unit runs in `out_dir/.staging/<key>/`; each output is fsynced and `os.replace`d into place, then
the record is written (tmp file, fsync, `os.replace`). A unit is finished when its record exists,
matches the job and the unit (its digest is the SHA-256 of key, outputs and params) and every output
exists with the recorded size and SHA-256. So after a SIGKILL at any point a rerun redoes exactly
the unfinished units; a unit whose record is present but whose output is missing or changed is
redone and reported (`UnitReport.redone`), never trusted silently. Records hold no times or host
names: an interrupted and resumed job leaves the same bytes, records included, as one run straight
through, whatever the number of workers, provided each unit's outputs are a pure function of its
params (the task's contract).

`run_units` refuses a directory whose `job.json` names another job digest: mixing two jobs' units
would be neither one (callers delete the directory for `--overwrite`). One `run_units` at a time
per directory (an advisory lock on `.units/job.json`'s directory where the OS has `fcntl`).

Engines:
- `LocalEngine(workers=1)` runs the units in this process; `workers > 1` uses a
  `ProcessPoolExecutor` with the "spawn" start method (safe with torch and threads), calling
  `task.setup()` once per worker process and `run_units` call; the pool is kept for the engine's
  next `run_units` (one start-up for a job of several stages) until `close()`.
- `RayEngine(address)` calls `ray.init(address=address)` unless Ray is already initialised
  (`None`: the `RAY_ADDRESS` environment variable if set, else a local Ray) and runs the units on a
  pool of actors, each reserving `num_cpus_per_unit` CPUs and `num_gpus_per_unit` GPUs, calling
  `setup()` once per `run_units` call and `run()` per unit; the actors are kept for the engine's
  next `run_units` until `close()`. On a cluster `out_dir` must be on a filesystem every node
  mounts at the same path. Ray is imported only here.

If a unit raises, no new units are started, the units in flight finish (their records are kept) and
`UnitFailed` is raised naming the unit, with the unit's exception as `error` and `__cause__`.

This file is copied byte for byte into ov_packing and ov_concepts (tests/test_work_units_copies.py
checks that), so that neither package depends on the other; ov_train imports ov_packing's. It
imports neither torch nor click (the progress display, `cli_conventions`, is imported on use).
"""

import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, Protocol

import msgspec

__all__ = [
    "Engine",
    "JobMismatch",
    "LocalEngine",
    "RayEngine",
    "UnitFailed",
    "UnitReport",
    "UnitTask",
    "WorkUnit",
    "WorkUnitError",
    "default_workers",
    "make_engine",
    "run_units",
    "unit_digest",
    "use_this_python",
]

RECORD_FORMAT = "ov-work-units"
RECORD_VERSION = 1
UNITS_DIR = ".units"
STAGING_DIR = ".staging"
JOB_FILE = "job.json"
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_HASH_CHUNK = 1 << 22


class WorkUnitError(RuntimeError):
    """A job of work units cannot run: bad units, another job's directory, a failed unit."""


class JobMismatch(WorkUnitError):
    """The output directory holds the units of another job (another job digest)."""


class UnitFailed(WorkUnitError):
    """A unit raised; `key` names it and `error` is its exception (also `__cause__`)."""

    def __init__(self, key: str, error: BaseException) -> None:
        super().__init__(f"work unit {key!r} failed: {type(error).__name__}: {error}")
        self.key = key
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        return (UnitFailed, (self.key, self.error))


class WorkUnit(msgspec.Struct, frozen=True):
    """One independent piece of a job.

    key: stable, filename-safe, unique in the job (`shard-000012`); outputs: the paths, relative to
    the job's output directory, that this unit writes (and no other unit does); params: what the
    task needs to compute them (msgpack or any bytes), part of the unit's digest.
    """

    key: str
    outputs: tuple[str, ...]
    params: bytes = b""


class UnitTask(Protocol):
    """What runs the units. Picklable (a top-level class with plain fields): it is sent to workers.

    `setup()` runs once per worker before its first unit (load a model, open files);
    `run(unit, staging)` writes every name in `unit.outputs` under `staging` (same relative paths),
    and nothing else, as a pure function of `unit.params` and the task's fields.
    """

    def setup(self) -> None: ...

    def run(self, unit: WorkUnit, staging: Path) -> None: ...


class UnitOutcome(NamedTuple):
    """What an engine reports for one unit: its key, seconds, and the exception if it failed."""

    key: str
    seconds: float
    error: BaseException | None


class Engine(Protocol):
    """Runs units and yields an outcome per unit as each finishes. After a failure it starts no
    new unit, waits for those in flight and yields them too."""

    def run(
        self, task: UnitTask, units: Sequence[WorkUnit], out_dir: Path, job_digest: str
    ) -> Iterator[UnitOutcome]: ...

    def describe(self) -> str: ...


class UnitReport(msgspec.Struct, frozen=True, kw_only=True):
    """What `run_units` did. `done`: units run now (`redone` included); `skipped`: finished before
    and verified; `redone`: units whose record was present but whose outputs were missing or changed
    (with the reason in `reasons`); `seconds`: run time of each unit run now."""

    total: int
    done: tuple[str, ...]
    skipped: tuple[str, ...]
    redone: tuple[str, ...]
    reasons: dict[str, str]
    seconds: dict[str, float]
    wall_seconds: float
    engine: str

    def summary(self) -> str:
        text = (
            f"{self.total} units: {len(self.done)} run, {len(self.skipped)} already done "
            f"(verified) on {self.engine} in {self.wall_seconds:.1f} s"
        )
        if self.redone:
            listed = "; ".join(f"{key}: {self.reasons[key]}" for key in self.redone[:5])
            more = f"; and {len(self.redone) - 5} more" if len(self.redone) > 5 else ""
            text += f"; {len(self.redone)} redone because their output changed ({listed}{more})"
        return text


class _OutputRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    bytes: int
    sha256: str


class _UnitRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key: str
    job_digest: str
    unit_digest: str
    outputs: dict[str, _OutputRecord]


class _JobRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: str
    version: int
    job_digest: str


def default_workers() -> int:
    """All cores: the default of `--workers`."""
    return os.cpu_count() or 1


def unit_digest(unit: WorkUnit) -> str:
    """SHA-256 of the unit's key, outputs and params (what its record pins)."""
    payload = msgspec.msgpack.encode([unit.key, list(unit.outputs), unit.params])
    return hashlib.sha256(payload).hexdigest()


def run_units(
    task: UnitTask,
    units: Sequence[WorkUnit],
    out_dir: str | Path,
    *,
    engine: Engine,
    job_digest: str,
    progress: bool | Callable[[int, int], None] = True,
    description: str = "",
) -> UnitReport:
    """Run the unfinished units of a job on `engine`; return what was run, skipped and redone.

    `job_digest` pins everything the units' outputs depend on besides their params (inputs,
    options, versions of formats); a directory holding another job's records is refused
    (`JobMismatch`). `progress`: True shows a bar (terminal) or lines (logs) on stderr; a callable
    is called as `progress(finished, total)` after each unit (skipped units counted first).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir).absolute()
    _check_units(units)
    units_dir = out_dir / UNITS_DIR
    units_dir.mkdir(parents=True, exist_ok=True)
    with _job_lock(units_dir):
        _claim_job(units_dir, job_digest)
        shutil.rmtree(out_dir / STAGING_DIR, ignore_errors=True)
        skipped, pending, reasons = _verify_finished(units, out_dir, job_digest)
        total = len(units)
        notify, close = _progress(progress, total, description)
        finished = len(skipped)
        notify(finished, total)
        seconds: dict[str, float] = {}
        failure: tuple[str, BaseException] | None = None
        try:
            if pending:
                for outcome in engine.run(task, pending, out_dir, job_digest):
                    if outcome.error is not None:
                        failure = failure or (outcome.key, outcome.error)
                        continue
                    seconds[outcome.key] = outcome.seconds
                    finished += 1
                    notify(finished, total)
        finally:
            close()
            with contextlib.suppress(OSError):
                (out_dir / STAGING_DIR).rmdir()
    if failure is not None:
        raise UnitFailed(*failure) from failure[1]
    order = {unit.key: position for position, unit in enumerate(units)}
    done = tuple(sorted(seconds, key=order.__getitem__))
    return UnitReport(
        total=total,
        done=done,
        skipped=tuple(skipped),
        redone=tuple(key for key in done if key in reasons),
        reasons={key: reasons[key] for key in done if key in reasons},
        seconds={key: seconds[key] for key in done},
        wall_seconds=time.perf_counter() - started,
        engine=engine.describe(),
    )


# --- engines ------------------------------------------------------------------------------------


class LocalEngine:
    """Units on this machine: in this process (`workers=1`) or a pool of spawned processes.

    The pool starts on the first `run` that needs it and is kept for later runs (a job of several
    stages pays the process start-up once); `close()` (or `with LocalEngine(n) as engine:`) stops
    it, and so does the interpreter's exit. The task is pickled with each unit, so keep its
    fields small and load big things in `setup()`, which runs once per worker and `run`.
    """

    def __init__(self, workers: int | None = None) -> None:
        workers = default_workers() if workers is None else workers
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def describe(self) -> str:
        return f"local engine, {self.workers} worker{'s' if self.workers != 1 else ''}"

    def close(self) -> None:
        """Stop the worker processes (a later `run` starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "LocalEngine":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"workers": self.workers, "_pool": None}

    def run(
        self, task: UnitTask, units: Sequence[WorkUnit], out_dir: Path, job_digest: str
    ) -> Iterator[UnitOutcome]:
        if self.workers == 1 or len(units) == 1:
            yield from self._inline(task, units, out_dir, job_digest)
            return
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        pool = self._pool
        token = f"{os.getpid()}-{time.time_ns()}-{id(task)}"
        waiting = list(reversed(units))
        running: dict[concurrent.futures.Future, str] = {}
        failed = False
        while waiting or running:
            while waiting and not failed and len(running) < 2 * self.workers:
                unit = waiting.pop()
                future = pool.submit(_pool_run, token, task, unit, str(out_dir), job_digest)
                running[future] = unit.key
            finished, _ = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in finished:
                key = running.pop(future)
                try:
                    seconds = future.result()
                except BaseException as error:
                    failed = True
                    if isinstance(error, concurrent.futures.process.BrokenProcessPool):
                        self._pool = None  # a worker died (killed, out of memory): start anew
                    yield UnitOutcome(key, 0.0, error)
                else:
                    yield UnitOutcome(key, seconds, None)
            if failed and not running:
                break

    @staticmethod
    def _inline(
        task: UnitTask, units: Sequence[WorkUnit], out_dir: Path, job_digest: str
    ) -> Iterator[UnitOutcome]:
        task.setup()
        for unit in units:
            try:
                seconds = _execute(task, unit, out_dir, job_digest)
            except Exception as error:
                yield UnitOutcome(unit.key, 0.0, error)
                return
            yield UnitOutcome(unit.key, seconds, None)


_POOL_TASK: tuple[str, UnitTask] | None = None


def _pool_run(token: str, task: UnitTask, unit: WorkUnit, out_dir: str, job_digest: str) -> float:
    """A unit in a pool worker: the task of this `run` set up once per worker (`token`)."""
    global _POOL_TASK
    if _POOL_TASK is None or _POOL_TASK[0] != token:
        _POOL_TASK = None  # drop the previous run's task (a model, open files) first
        try:
            task.setup()
        except Exception as error:
            raise WorkUnitError(
                f"the worker's task.setup() failed: {type(error).__name__}: {error}"
            ) from error
        _POOL_TASK = (token, task)
    return _execute(_POOL_TASK[1], unit, Path(out_dir), job_digest)


class RayEngine:
    """Units on Ray actors: local Ray (address None, no RAY_ADDRESS) or an existing cluster."""

    def __init__(
        self,
        address: str | None = None,
        num_cpus_per_unit: float = 1,
        num_gpus_per_unit: float = 0,
        actors: int | None = None,
    ) -> None:
        if num_cpus_per_unit < 0 or num_gpus_per_unit < 0:
            raise ValueError("num_cpus_per_unit and num_gpus_per_unit must be >= 0")
        if num_cpus_per_unit == 0 and num_gpus_per_unit == 0:
            raise ValueError("a Ray unit needs at least some CPU or GPU")
        if actors is not None and actors < 1:
            raise ValueError(f"actors must be at least 1, got {actors}")
        self.address = address
        self.num_cpus_per_unit = num_cpus_per_unit
        self.num_gpus_per_unit = num_gpus_per_unit
        self.actors = actors
        self._actors: list[Any] = []

    def describe(self) -> str:
        where = self.address or os.environ.get("RAY_ADDRESS") or "local Ray"
        return f"Ray engine ({where})"

    def _connect(self) -> Any:
        local = not (self.address or os.environ.get("RAY_ADDRESS"))
        if local:
            use_this_python()
        try:
            import ray
        except ImportError as error:  # pragma: no cover - depends on the install
            raise WorkUnitError(
                "--engine ray needs Ray: install the package's `ray` extra "
                "(e.g. pip install 'ov-packing[ray]')"
            ) from error
        if not ray.is_initialized():
            ray.init(address=self.address)
        return ray

    def _actor_count(self, ray: Any, units: int) -> int:
        if self.actors is not None:
            return min(self.actors, units)
        resources = ray.cluster_resources()
        fits = []
        if self.num_cpus_per_unit > 0:
            fits.append(int(resources.get("CPU", 0) // self.num_cpus_per_unit))
        if self.num_gpus_per_unit > 0:
            fits.append(int(resources.get("GPU", 0) // self.num_gpus_per_unit))
        count = min(fits)
        if count < 1:
            raise WorkUnitError(
                f"the Ray cluster ({resources.get('CPU', 0)} CPUs, {resources.get('GPU', 0)} GPUs)"
                f" cannot hold one unit of {self.num_cpus_per_unit} CPUs and "
                f"{self.num_gpus_per_unit} GPUs"
            )
        return min(count, units)

    def close(self) -> None:
        """Stop the actors (a later `run` starts new ones)."""
        if self._actors:
            import ray

            for actor in self._actors:
                ray.kill(actor)
        self._actors = []

    def __enter__(self) -> "RayEngine":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_actors": []}

    def run(
        self, task: UnitTask, units: Sequence[WorkUnit], out_dir: Path, job_digest: str
    ) -> Iterator[UnitOutcome]:
        ray = self._connect()
        wanted = self._actor_count(ray, len(units))
        if len(self._actors) < wanted:
            actor_class = ray.remote(
                num_cpus=self.num_cpus_per_unit, num_gpus=self.num_gpus_per_unit
            )(_UnitActor)
            self._actors += [actor_class.remote() for _ in range(wanted - len(self._actors))]
        token = f"{os.getpid()}-{time.time_ns()}-{id(task)}"
        task_ref = ray.put(task)
        waiting = list(reversed(units))
        running: dict[Any, tuple[str, Any]] = {}
        idle = list(self._actors[:wanted])
        failed = False
        while waiting or running:
            while waiting and idle and not failed:
                unit, actor = waiting.pop(), idle.pop()
                ref = actor.run.remote(token, task_ref, unit, str(out_dir), job_digest)
                running[ref] = (unit.key, actor)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                key, actor = running.pop(ref)
                try:
                    seconds = ray.get(ref)
                except Exception as error:
                    failed = True
                    if isinstance(error, ray.exceptions.RayActorError):
                        self._actors.remove(actor)  # its process died: not reused
                    else:
                        idle.append(actor)
                    yield UnitOutcome(key, 0.0, _ray_cause(error))
                else:
                    idle.append(actor)
                    yield UnitOutcome(key, seconds, None)
            if failed and not running:
                break


def use_this_python() -> None:
    """Make a local Ray start its workers with this interpreter and environment.

    Ray >= 2.47 notices a driver started by `uv run` and starts every worker through `uv run`
    again, in a copy of the working directory, which re-resolves (and here fails to find) the
    project; a local Ray shares this machine's environment, so that is never needed. Setting
    `RAY_ENABLE_UV_RUN_RUNTIME_ENV=0` yourself does the same (it is read when Ray is imported;
    this also updates the value if Ray was imported already). Not done for a cluster
    (`--ray-address`/`RAY_ADDRESS`), whose nodes are set up by their owner.
    """
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] == "0":
        import sys

        constants = sys.modules.get("ray._private.ray_constants")
        if constants is not None and hasattr(constants, "RAY_ENABLE_UV_RUN_RUNTIME_ENV"):
            constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False


class _UnitActor:
    """A Ray actor: the task of each `run` (`token`) set up once, then one unit per call."""

    def __init__(self) -> None:
        self.current: tuple[str, UnitTask] | None = None

    def run(
        self, token: str, task: UnitTask, unit: WorkUnit, out_dir: str, job_digest: str
    ) -> float:
        if self.current is None or self.current[0] != token:
            self.current = None  # drop the previous run's task (a model, open files) first
            task.setup()
            self.current = (token, task)
        return _execute(self.current[1], unit, Path(out_dir), job_digest)


def _ray_cause(error: BaseException) -> BaseException:
    """The unit's own exception inside Ray's RayTaskError (or the error itself)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


def make_engine(
    engine: str,
    workers: int | None = None,
    ray_address: str | None = None,
    *,
    num_cpus_per_unit: float = 1,
    num_gpus_per_unit: float = 0,
) -> "LocalEngine | RayEngine":
    """The engine a CLI's `--engine local|ray --workers N --ray-address ADDR` name. With Ray,
    `workers` (when given) caps the number of actors; by default the cluster's resources decide."""
    if engine == "local":
        return LocalEngine(workers)
    if engine == "ray":
        return RayEngine(
            ray_address or None,
            num_cpus_per_unit=num_cpus_per_unit,
            num_gpus_per_unit=num_gpus_per_unit,
            actors=workers,
        )
    raise ValueError(f"unknown engine {engine!r}: expected 'local' or 'ray'")


# --- one unit -----------------------------------------------------------------------------------


def _execute(task: UnitTask, unit: WorkUnit, out_dir: Path, job_digest: str) -> float:
    """Run one unit in its staging directory, move its outputs into place, write its record."""
    started = time.perf_counter()
    record_path = out_dir / UNITS_DIR / f"{unit.key}.json"
    record_path.unlink(missing_ok=True)
    staging = out_dir / STAGING_DIR / unit.key
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    task.run(unit, staging)
    outputs: dict[str, _OutputRecord] = {}
    for name in unit.outputs:
        staged = staging / name
        if not staged.is_file():
            raise WorkUnitError(f"unit {unit.key!r} did not write its output {name!r}")
        size, digest = _hash_file(staged, sync=True)
        outputs[name] = _OutputRecord(bytes=size, sha256=digest)
    extra = sorted(
        path.relative_to(staging).as_posix()
        for path in staging.rglob("*")
        if not path.is_dir() and path.relative_to(staging).as_posix() not in outputs
    )
    if extra:
        raise WorkUnitError(f"unit {unit.key!r} wrote files it does not declare: {extra[:5]}")
    parents = set()
    for name in unit.outputs:
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, target)
        parents.add(target.parent)
    for parent in sorted(parents):
        _fsync_dir(parent)
    record = _UnitRecord(
        key=unit.key, job_digest=job_digest, unit_digest=unit_digest(unit), outputs=outputs
    )
    _write_atomically(record_path, _encode_json(record))
    shutil.rmtree(staging, ignore_errors=True)
    return time.perf_counter() - started


# --- records and checks -------------------------------------------------------------------------


def _check_units(units: Sequence[WorkUnit]) -> None:
    keys: set[str] = set()
    owners: dict[str, str] = {}
    for position, unit in enumerate(units):
        if not isinstance(unit, WorkUnit):
            raise WorkUnitError(f"unit {position} is a {type(unit).__name__}, not a WorkUnit")
        if not _KEY.fullmatch(unit.key) or unit.key == JOB_FILE.removesuffix(".json"):
            raise WorkUnitError(
                f"unit {position}: key {unit.key!r} is not filename-safe (letters, digits, '.', "
                "'_', '-'; not starting with a dot; at most 200 characters; not 'job')"
            )
        if unit.key in keys:
            raise WorkUnitError(f"unit {position}: key {unit.key!r} is used by another unit")
        keys.add(unit.key)
        if not unit.outputs:
            raise WorkUnitError(f"unit {unit.key!r} declares no outputs")
        for name in unit.outputs:
            reason = _unsafe_output(name)
            if reason:
                raise WorkUnitError(f"unit {unit.key!r}: output {name!r} {reason}")
            if name in owners:
                raise WorkUnitError(
                    f"units {owners[name]!r} and {unit.key!r} both declare the output {name!r}"
                )
            owners[name] = unit.key


def _unsafe_output(name: str) -> str | None:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or "\\" in name:
        return "is not a relative POSIX path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "has an empty, '.' or '..' component"
    if path.parts[0] in (UNITS_DIR, STAGING_DIR):
        return f"is inside the bookkeeping folder {path.parts[0]}/"
    return None


def _claim_job(units_dir: Path, job_digest: str) -> None:
    path = units_dir / JOB_FILE
    if path.exists():
        try:
            job = msgspec.json.decode(path.read_bytes(), type=_JobRecord)
        except msgspec.DecodeError as error:
            raise JobMismatch(f"{path} is not a work-units job record: {error}") from None
        if job.job_digest != job_digest:
            raise JobMismatch(
                f"{path.parent.parent} holds the units of another job (digest "
                f"{job.job_digest[:16]}..., this job {job_digest[:16]}...): its inputs or options "
                "differ; use another output directory or start over (--overwrite)"
            )
        return
    job = _JobRecord(format=RECORD_FORMAT, version=RECORD_VERSION, job_digest=job_digest)
    _write_atomically(path, _encode_json(job))


def _verify_finished(
    units: Sequence[WorkUnit], out_dir: Path, job_digest: str
) -> tuple[list[str], list[WorkUnit], dict[str, str]]:
    """Split units into finished (record matches, outputs verified) and pending; `reasons` says
    why a unit with a record is redone."""

    def check(unit: WorkUnit) -> tuple[bool, str | None]:
        path = out_dir / UNITS_DIR / f"{unit.key}.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return False, None
        try:
            record = msgspec.json.decode(data, type=_UnitRecord)
        except msgspec.DecodeError as error:
            return False, f"record {path.name} unreadable ({error})"
        if record.job_digest != job_digest or record.key != unit.key:
            return False, "record of another job"
        if record.unit_digest != unit_digest(unit) or set(record.outputs) != set(unit.outputs):
            return False, "record of another version of the unit"
        for name, expected in record.outputs.items():
            target = out_dir / name
            try:
                size = target.stat().st_size
            except FileNotFoundError:
                return False, f"{name} missing"
            if size != expected.bytes:
                return False, f"{name} is {size} bytes, recorded {expected.bytes}"
            if _hash_file(target)[1] != expected.sha256:
                return False, f"{name} SHA-256 differs from the record"
        return True, None

    workers = min(32, default_workers() * 2, max(1, len(units)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(check, units))
    skipped: list[str] = []
    pending: list[WorkUnit] = []
    reasons: dict[str, str] = {}
    for unit, (ok, reason) in zip(units, results, strict=True):
        if ok:
            skipped.append(unit.key)
        else:
            pending.append(unit)
            if reason is not None:
                reasons[unit.key] = reason
    return skipped, pending, reasons


def _hash_file(path: Path, *, sync: bool = False) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb" if not sync else "rb+") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(handle.fileno())
    return size, digest.hexdigest()


def _encode_json(record: msgspec.Struct) -> bytes:
    return json.dumps(msgspec.to_builtins(record), sort_keys=True, indent=1).encode() + b"\n"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _job_lock(units_dir: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(units_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkUnitError(
                f"another run is writing {units_dir.parent} (it holds the lock on {units_dir})"
            ) from None
        yield
    finally:
        os.close(fd)


def _progress(
    progress: bool | Callable[[int, int], None], total: int, description: str
) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    if callable(progress):
        return progress, lambda: None
    if not progress:
        return (lambda finished, total: None), lambda: None
    from .cli_conventions import progress_bar

    bar = progress_bar(desc=description or "units", total=total, unit="unit")

    def notify(finished: int, total: int) -> None:
        bar.update(finished - bar.n)

    return notify, bar.close
