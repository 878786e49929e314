"""The flags every onevision CLI spells the same way, and how their progress is shown.

The six CLIs share one vocabulary (the table is in ARCHITECTURE.md): `--out/-o` for what a command
writes, `--overwrite` to replace it, `--model` for a model folder, `--device
{auto,cpu,cuda,cuda:N}`, `--dtype` (compute) and `--store-dtype` (weights written), `--seed`,
`--workers`, `--max-shard-size 500MB|2GiB|bytes`, `-q/--quiet`. Each option is built here once, so
its spelling, default, choices and validation cannot drift between commands. Old spellings stay
accepted as hidden aliases (`AliasedOption`): scripts keep working, `--help` shows one name.

Progress: a tqdm bar when stderr is a terminal; otherwise (logs, CI) plain lines, one per tenth of
the work or every 30 s, each with the count, rate and ETA, and no carriage returns; nothing with
`--quiet`.

This file is copied, byte for byte, into rice_vit, ov_packing and ov_concepts (tests/
test_cli_flags.py checks the copies are identical). ov_packing and ov_concepts depend on no other
workspace member so that a data team can install either alone, and a seventh package for 300 lines
would cost more than the check; ov_model, ov_eval and ov_train import rice_vit's copy. Torch is
imported only when a `--device` value is checked, so ov_packing (no torch) can hold the file.
"""

import io
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import click
from tqdm import tqdm

COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
STORE_DTYPES = ("keep", "float32", "bfloat16", "float16")
_SHORT_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_DEVICE = re.compile(r"auto|cpu|cuda(?::(\d+))?")
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
PROGRESS_LINE_SECONDS = 30.0

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class AliasedOption(click.Option):
    """A click option whose `hidden_aliases` (old spellings) parse but are left out of --help."""

    def __init__(self, *args: Any, hidden_aliases: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_aliases = tuple(hidden_aliases)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        """The help line without the hidden aliases."""
        opts, secondary = self.opts, self.secondary_opts
        self.opts = [name for name in opts if name not in self.hidden_aliases]
        self.secondary_opts = [name for name in secondary if name not in self.hidden_aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts, self.secondary_opts = opts, secondary


def _option(*decls: str, hidden_aliases: Iterable[str] = (), **kwargs: Any) -> Decorator:
    aliases = tuple(hidden_aliases)
    declared = {name for decl in decls for name in decl.split("/")}
    extra = [alias for alias in aliases if alias not in declared]
    return click.option(*decls, *extra, cls=AliasedOption, hidden_aliases=aliases, **kwargs)


class OutputExistsError(click.ClickException):
    """An output that exists, refused without --overwrite: one line, exit status 2."""

    exit_code = 2


_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError)


def os_error_line(error: OSError) -> click.ClickException:
    """An operating-system error as one line naming the path: exit status 2 when the path given
    is wrong (missing, a file for a folder, ...), 1 when the machine is (permission denied, disk
    full, I/O error)."""
    where = [str(name) for name in (error.filename, error.filename2) if name is not None]
    reason = error.strerror or str(error)
    line = click.ClickException(f"{' -> '.join(where)}: {reason}" if where else reason)
    line.exit_code = 2 if isinstance(error, _PATH_ERRORS) else 1
    return line


class Group(click.Group):
    """The click group of every onevision CLI: an OSError a command meets (a folder it may not
    write, a full disk, a path that vanished) ends it with one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, turning an OSError into `os_error_line`."""
        try:
            return super().invoke(ctx)
        except OSError as error:
            raise os_error_line(error) from error


def out_option(
    help: str,
    *,
    dest: str = "out",
    folder: bool = True,
    required: bool = True,
    default: Any = None,
    show_default: bool | str = True,
    hidden_aliases: Iterable[str] = (),
) -> Decorator:
    """`--out/-o PATH`: what the command writes (a folder, or a file with folder=False)."""
    return _option(
        "--out",
        "-o",
        dest,
        hidden_aliases=hidden_aliases,
        type=click.Path(file_okay=not folder, dir_okay=folder, path_type=Path),
        required=required,
        default=default,
        show_default=show_default
        if default is not None or isinstance(show_default, str)
        else False,
        help=help,
    )


def overwrite_option(help: str = "Replace an existing output (refused without this).") -> Decorator:
    """`--overwrite`: allow replacing what --out names."""
    return click.option("--overwrite", is_flag=True, default=False, help=help)


def claim_output(
    path: Path,
    overwrite: bool,
    *,
    folder: bool = True,
    resumable: bool = False,
    keep: Iterable[Path] = (),
) -> None:
    """Refuse an existing output without --overwrite (OutputExistsError); with it, remove it.

    A folder counts as existing when it holds anything (an empty folder is used as is); a file
    when it exists. A `resumable` output (a command that continues its own earlier run) is left
    as it is without --overwrite, and removed with it (start over). A folder that holds the
    working directory, the home folder or one of the command's inputs (`keep`) is never
    removed.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if resumable and not overwrite:
        return
    occupied = any(path.iterdir()) if path.is_dir() else True
    if not occupied:
        return
    what = "is not empty" if path.is_dir() else "exists"
    if not overwrite:
        raise OutputExistsError(f"{path} {what}; pass --overwrite to replace it")
    if path.is_dir() and not path.is_symlink():
        for kept in (Path.cwd(), Path.home(), *keep):
            if Path(kept).resolve().is_relative_to(path.resolve()):
                raise OutputExistsError(f"{path} holds {kept}; not removing it")
        if folder:
            shutil.rmtree(path)
    elif folder:
        path.unlink()  # a file (or link) where a folder goes; a file output is simply rewritten


class DeviceType(click.ParamType):
    """auto, cpu, cuda or cuda:N, checked against this machine; auto is CUDA when available.

    Converts to the device string to use ("cpu", "cuda", "cuda:1"), never "auto".
    """

    name = "device"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        """The choices as the help shows them."""
        return "[auto|cpu|cuda|cuda:N]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """The device to use for `value`; fails on a malformed or missing device."""
        text = str(value).strip().lower()
        match = _DEVICE.fullmatch(text)
        if match is None:
            self.fail(f"{value!r} is not one of auto, cpu, cuda, cuda:N", param, ctx)
        if text == "cpu":
            return text
        import torch

        available = torch.cuda.is_available()
        if text == "auto":
            return "cuda" if available else "cpu"
        if not available:
            self.fail(f"{value!r}: no CUDA device is available on this machine", param, ctx)
        if match[1] is not None and int(match[1]) >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            self.fail(f"{value!r}: this machine has {count} CUDA device(s)", param, ctx)
        return text


def device_option(help: str = "Where the model runs.") -> Decorator:
    """`--device {auto,cpu,cuda,cuda:N}`, default auto (CUDA when available)."""
    return click.option(
        "--device",
        type=DeviceType(),
        default="auto",
        help=f"{help} auto: CUDA when available, else CPU.",
    )


class DtypeChoice(click.Choice):
    """A dtype choice that also accepts the short (fp32, bf16, fp16) and old spellings."""

    def __init__(self, choices: Iterable[str], aliases: dict[str, str]) -> None:
        super().__init__(tuple(choices))
        self.aliases = {**_SHORT_DTYPES, **aliases}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The canonical name of `value`."""
        text = str(value).strip().lower()
        return super().convert(self.aliases.get(text, text), param, ctx)


def dtype_option(
    help: str,
    *,
    default: str = "auto",
    choices: Iterable[str] = COMPUTE_DTYPES,
    hidden_aliases: Iterable[str] = (),
) -> Decorator:
    """`--dtype`: the compute dtype; auto is the command's choice, stated in `help`."""
    return _option(
        "--dtype",
        "dtype",
        hidden_aliases=hidden_aliases,
        type=DtypeChoice(choices, {"stored": "auto", "keep": "auto"}),
        default=default,
        help=help,
    )


def store_dtype_option(
    help: str,
    *,
    default: str = "keep",
    choices: Iterable[str] = STORE_DTYPES,
    hidden_aliases: Iterable[str] = (),
) -> Decorator:
    """`--store-dtype`: the dtype of the weights written; keep leaves them as they are."""
    return _option(
        "--store-dtype",
        "store_dtype",
        hidden_aliases=hidden_aliases,
        type=DtypeChoice(choices, {"stored": "keep"}),
        default=default,
        help=help,
    )


def seed_option(help: str = "Random seed.", *, maximum: int = 2**63 - 1) -> Decorator:
    """`--seed N`, a non-negative integer, default 0."""
    return click.option("--seed", type=click.IntRange(0, maximum), default=0, help=help)


def workers_option(help: str, *, default: int = 1, hidden_aliases: Iterable[str] = ()) -> Decorator:
    """`--workers N`: processes or threads; changes speed, never the result."""
    return _option(
        "--workers",
        "workers",
        hidden_aliases=hidden_aliases,
        type=click.IntRange(min=1),
        default=default,
        help=help,
    )


def work_unit_options(workers_help: str) -> Decorator:
    """`--workers N` (default None: the command's own default), `--engine local|ray` and
    `--ray-address ADDR` (also RAY_ADDRESS): how a command's resumable work units run; the bytes
    written are the same on every engine."""
    options = [
        _option(
            "--workers", "workers", type=click.IntRange(min=1), default=None, help=workers_help
        ),
        _option(
            "--engine",
            "engine",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help="local: processes on this machine; ray: actors of a Ray cluster (the `ray` "
            "extra; the output folder must be on a filesystem every node mounts).",
        ),
        _option(
            "--ray-address",
            "ray_address",
            envvar="RAY_ADDRESS",
            default=None,
            help="Ray cluster to join (e.g. auto, or ray://head:10001); also RAY_ADDRESS. "
            "Default: start a local Ray.",
        ),
    ]

    def decorate(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def parse_size(text: str | int) -> int:
    """Bytes from 1000, '500MB' (10**6) or '2GiB' (2**30); ValueError when unreadable."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.fullmatch(str(text))
        if match is None:
            raise ValueError(f"cannot read size {text!r}; use e.g. 5GB, 500MB, 2GiB, 1000")
        value = int(float(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()])
    if value < 1:
        raise ValueError(f"size must be at least one byte, got {text!r}")
    return value


class ByteSize(click.ParamType):
    """A size such as 5GB, 500MB, 2GiB or a byte count; converts to bytes (int)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """Bytes of `value`."""
        try:
            return parse_size(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


def max_shard_size_option(
    help: str, *, default: str | None = "5GB", hidden_aliases: Iterable[str] = ()
) -> Decorator:
    """`--max-shard-size SIZE`: start a new shard file before one would grow past SIZE."""
    return _option(
        "--max-shard-size",
        "max_shard_size",
        hidden_aliases=hidden_aliases,
        type=ByteSize(),
        default=default,
        show_default=True if default is not None else "no limit",
        help=f"{help.rstrip('.')} (5GB, 500MB, 2GiB or bytes).",
    )


def quiet_option() -> Decorator:
    """`-q/--quiet`: no progress display (`--no-progress` is an old spelling of it)."""
    return _option(
        "--quiet/--progress",
        "-q",
        "quiet",
        hidden_aliases=("--no-progress", "--progress"),
        default=False,
        show_default=False,
        help="No progress display (a bar on a terminal, otherwise a line per 10% or 30 s).",
    )


class _Discard(io.TextIOBase):
    """Where tqdm's own bar drawing goes when LineProgress writes the lines itself."""

    def write(self, text: str) -> int:
        """Drop `text`."""
        return len(text)


class LineProgress(tqdm):
    """tqdm for logs: a plain line per tenth of the total or every `every_s` seconds, and one at
    the end, each with count, rate and ETA; no carriage returns, no bar redraws."""

    def __init__(
        self, *args: Any, stream: TextIO, every_s: float = PROGRESS_LINE_SECONDS, **kwargs: Any
    ) -> None:
        self._stream = stream
        self._every_s = every_s
        self._printed_n: float | None = None
        self._printed_at = time.monotonic()
        self._printed_tenth = 0
        kwargs.update(file=_Discard(), mininterval=0, miniters=1, dynamic_ncols=False)
        super().__init__(*args, **kwargs)
        self._printed_tenth = self._tenth()  # a resumed run does not reprint what it skips

    def _tenth(self) -> int:
        return int(10 * self.n / self.total) if self.total else 0

    def _line(self) -> str:
        known = bool(self.total)
        fmt = (
            "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
            "{rate_fmt}{postfix}]"
            if known
            else "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"
        )
        return self.format_meter(**{**self.format_dict, "bar_format": fmt})

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Print a line when a new tenth is reached or `every_s` passed since the last one."""
        if self.n == self._printed_n or self.n == 0:
            return True
        now = time.monotonic()
        if self._tenth() > self._printed_tenth or now - self._printed_at >= self._every_s:
            self._print(now)
        return True

    def _print(self, now: float) -> None:
        self._stream.write(self._line() + "\n")
        self._stream.flush()
        self._printed_n, self._printed_at, self._printed_tenth = self.n, now, self._tenth()

    def close(self) -> None:
        """Print the final count (unless already printed), then close."""
        if not self.disable and self.n != self._printed_n and self.n > 0:
            self._print(time.monotonic())
        super().close()


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is an interactive terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    total: float | None = None,
    unit: str = "it",
    enabled: bool = True,
    stream: TextIO | None = None,
    **kwargs: Any,
) -> tqdm:
    """Progress on `stream` (stderr): a tqdm bar on a terminal, LineProgress otherwise, a silent
    tqdm when not `enabled`. Use it as tqdm (update, set_postfix_str, write, close)."""
    stream = sys.stderr if stream is None else stream
    common = dict(desc=desc, total=total, unit=unit, **kwargs)
    if not enabled:
        return tqdm(iterable, disable=True, **common)
    if is_terminal(stream):
        return tqdm(iterable, file=stream, dynamic_ncols=True, **common)
    return LineProgress(iterable, stream=stream, **common)
