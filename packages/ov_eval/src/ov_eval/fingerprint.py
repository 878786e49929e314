"""Run fingerprints: what produced a predictions file, so a resume can never mix two runs.

`ov-eval run --out OUT` resumes an earlier run there by design. Without a record of what that
earlier run was, a second run with another checkpoint (or dtype, pixel limit, budget, task
version...) would keep the first run's predictions and report them under the second run's name.
So next to each `OUT/predictions/<task>.jsonl` the runner writes
`OUT/predictions/<task>.fingerprint.json`, before the first prediction line, and a resume first
compares it with the fingerprint of the run being started: any difference is refused with one
line naming each differing field (old -> new); `--overwrite` starts over.

What a fingerprint holds (`RunFingerprint`), and why:

- the model: its path (resolved, so a resume from another working directory matches) and
  `model_sha256`, a SHA-256 over the SHA-256 of each file that defines it: the weights
  (`*.safetensors`), every `*.json` (config, safetensors index, preprocessor and tokenizer
  configs, chat template, generation config), `*.jinja`, `*.model`, `*.txt` (merges). Hashing the
  weights' bytes, not just the index or the safetensors headers, is deliberate: two checkpoints of
  one architecture (step 1000 and step 2000, or a re-export into the same folder) have identical
  indexes, headers and configs. Full hashing costs about as much as reading the weights once
  (about a second per GB and core; shards are hashed in parallel, and the model load that
  follows reads them from the page cache), so each file's digest is cached in the fingerprint
  with its size and modification time: a resume of an untouched checkpoint into the same --out
  hashes nothing; a copied or rewritten file is hashed again.
- the compute: `dtype` as requested (`auto` is the checkpoint's dtype, covered by the config's
  hash) and the device kind (`cpu` or `cuda`: their kernels round differently, so a CPU run is
  not resumed on a GPU; the device index does not change numerics and is not recorded).
- the images: `min_pixels` and `max_pixels` as requested (None: the checkpoint's
  `preprocessor_config.json`, whose content is in `model_sha256`).
- the generation: the token budget, the stop strings and the decoding (always greedy).
- the task: name, version, prompt hash and `reference` (the scorer it follows).
- the ov-eval results format version.

Not recorded, because they do not change a prediction: the batch size (predictions are
batch-size invariant, tested), `--limit` (a limited run can be extended by resuming without
it), the ov-eval version (a change that affects outputs changes a task version or the format).
"""

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ov_eval.atomic import write_atomically
from ov_eval.errors import EvalError, ResultsError, RunMismatchError
from ov_eval.results import FORMAT_VERSION, PREDICTIONS_DIR
from ov_eval.tasks import Task

MODEL_FILE_PATTERNS = ("*.safetensors", "*.json", "*.jinja", "*.model", "*.txt")
"""The files of a model folder whose content defines the model's outputs."""
DECODING = "greedy"
_HASH_CHUNK = 1 << 24


class FileDigest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The SHA-256 of one model file, with the size and modification time it was taken at."""

    size: int
    mtime_ns: int
    sha256: str


class RunFingerprint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything that decides a task's predictions (see the module docstring)."""

    format_version: int
    task: str
    task_version: int
    prompt_hash: str
    reference: str
    model: str
    model_sha256: str
    dtype: str
    device: str
    min_pixels: int | None
    max_pixels: int | None
    max_new_tokens: int
    stop_strings: list[str]
    decoding: str
    model_files: dict[str, FileDigest]
    """Per-file digests: they name the files that changed, and spare rehashing on resume. Not
    compared themselves (a copy changes the times, not the content): `model_sha256` is."""


COMPARED_FIELDS = tuple(name for name in RunFingerprint.__struct_fields__ if name != "model_files")


@dataclass(frozen=True)
class ModelIdentity:
    """A model folder and the digests of the files that define it."""

    path: str
    sha256: str
    files: dict[str, FileDigest]


def fingerprint_file(task: str) -> str:
    """The fingerprint path of `task`, relative to the results directory."""
    return f"{PREDICTIONS_DIR}/{task}.fingerprint.json"


def identify_model(folder: Path, known: dict[str, FileDigest] | None = None) -> ModelIdentity:
    """Hash the files of `folder` that define the model. A file whose size and modification
    time match its entry in `known` (an earlier fingerprint of the same folder) is not read."""
    folder = Path(folder).resolve()
    known = known or {}
    names = sorted({path.name for pattern in MODEL_FILE_PATTERNS for path in folder.glob(pattern)})
    files: dict[str, FileDigest] = {}
    to_hash: dict[str, os.stat_result] = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        stat = path.stat()
        cached = known.get(name)
        if cached is not None and (cached.size, cached.mtime_ns) == (
            stat.st_size,
            stat.st_mtime_ns,
        ):
            files[name] = cached
        else:
            to_hash[name] = stat
    # hashlib releases the GIL on large buffers: shards hash in parallel, one thread each.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = dict(zip(to_hash, pool.map(_sha256, (folder / n for n in to_hash)), strict=True))
    for name, stat in to_hash.items():
        files[name] = FileDigest(stat.st_size, stat.st_mtime_ns, digests[name])
    if not files:
        raise EvalError(f"{folder}: no model files ({', '.join(MODEL_FILE_PATTERNS)})")
    files = dict(sorted(files.items()))
    combined = hashlib.sha256()
    for name, digest in files.items():
        combined.update(f"{name}\0{digest.sha256}\n".encode())
    return ModelIdentity(str(folder), combined.hexdigest(), files)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, kw_only=True)
class RunSetup:
    """The run-wide part of a fingerprint (the `ov-eval run` options that change outputs)."""

    model: ModelIdentity
    dtype: str
    device: str
    min_pixels: int | None
    max_pixels: int | None
    max_new_tokens: int | None
    """The run's override of every task's budget (None: each task's own)."""


def make_fingerprint(task: Task, setup: RunSetup) -> RunFingerprint:
    """The fingerprint of `task` run with `setup`."""
    return RunFingerprint(
        format_version=FORMAT_VERSION,
        task=task.name,
        task_version=task.version,
        prompt_hash=task.prompt_hash,
        reference=task.reference,
        model=setup.model.path,
        model_sha256=setup.model.sha256,
        dtype=setup.dtype,
        device=setup.device.split(":")[0],
        min_pixels=setup.min_pixels,
        max_pixels=setup.max_pixels,
        max_new_tokens=setup.max_new_tokens or task.max_new_tokens,
        stop_strings=list(task.stop_strings),
        decoding=DECODING,
        model_files=setup.model.files,
    )


def fingerprint_hash(fingerprint: RunFingerprint) -> str:
    """A short hash of the compared fields (recorded in results.json for each task)."""
    compared = {name: getattr(fingerprint, name) for name in COMPARED_FIELDS}
    canonical = msgspec.json.encode(compared, order="sorted")
    return hashlib.sha256(canonical).hexdigest()[:16]


def differences(old: RunFingerprint, new: RunFingerprint) -> list[str]:
    """'field: old -> new' for every compared field that differs (changed model files named)."""
    found = []
    for name in COMPARED_FIELDS:
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if name == "model_sha256":
            changed = sorted(
                file
                for file in old.model_files.keys() | new.model_files.keys()
                if getattr(old.model_files.get(file), "sha256", None)
                != getattr(new.model_files.get(file), "sha256", None)
            )
            found.append(
                f"model_sha256: {before[:12]} -> {after[:12]} (files: {', '.join(changed)})"
            )
        else:
            found.append(f"{name}: {_shown(before)} -> {_shown(after)}")
    return found


def _shown(value) -> str:
    return repr(value) if isinstance(value, str | list) else str(value)


def read_fingerprint(path: Path) -> RunFingerprint:
    """Read a fingerprint file; ResultsError naming the file when it is not one of this format."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=RunFingerprint)
    except OSError as error:
        raise ResultsError(f"{path}: cannot read ({error.strerror or error})") from error
    except msgspec.DecodeError as error:
        raise RunMismatchError(
            f"{path}: not a fingerprint this ov-eval can compare ({error}); "
            "start over with --overwrite or use another --out"
        ) from error


def write_fingerprint(path: Path, fingerprint: RunFingerprint) -> None:
    """Write `fingerprint` to `path` atomically."""
    write_atomically(path, msgspec.json.format(msgspec.json.encode(fingerprint), indent=2) + b"\n")


def check_resumable(fingerprint_path: Path, predictions_path: Path, new: RunFingerprint) -> None:
    """Refuse (RunMismatchError, one line) to resume into predictions another run wrote."""
    if not _has_predictions(predictions_path):
        return
    if not fingerprint_path.is_file():
        raise RunMismatchError(
            f"{predictions_path}: predictions without a fingerprint ({fingerprint_path.name}; "
            "written by an older ov-eval?), so they cannot be checked against this run; "
            "start over with --overwrite or use another --out"
        )
    found = differences(read_fingerprint(fingerprint_path), new)
    if found:
        raise RunMismatchError(
            f"{predictions_path}: written by a different run ({'; '.join(found)}); "
            "start over with --overwrite or use another --out"
        )


def _has_predictions(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False
