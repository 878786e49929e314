"""The `ov-concepts` CLI: help and version, defaults in help, end-to-end runs, one-line errors."""

import pathlib
import tomllib

import click
import numpy as np
from click.testing import CliRunner

from ov_concepts import __version__
from ov_concepts.cli import main

PYPROJECT = pathlib.Path(__file__).parents[1] / "pyproject.toml"


def test_version_flag_prints_the_version_declared_in_pyproject():
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"ov-concepts, version {declared}"
    assert __version__ == declared


def test_help_describes_the_package():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: ov-concepts" in result.output


def run(*args: str) -> str:
    quiet = ["--quiet"] if args[0] not in ("synth", "report") else []
    result = CliRunner().invoke(main, [*args, *quiet])
    assert result.exit_code == 0, result.output
    return result.output


def fail(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    return result.output


def _has_default(option: click.Option, context: click.Context) -> bool:
    default = option.get_default(context)
    return default is not None and default is not getattr(click.core, "UNSET", object())


def test_every_command_shows_every_default_in_its_help():
    for name, command in main.commands.items():
        help_text = " ".join(CliRunner().invoke(main, [name, "--help"]).output.split())
        assert f"Usage: ov-concepts {name}" in help_text
        context = click.Context(command, parent=click.Context(main), show_default=True)
        for param in command.params:
            if not isinstance(param, click.Option) or param.required or param.is_flag:
                continue
            help_record = param.get_help_record(context)[1]
            expected = "[default: " if _has_default(param, context) else "Default: "
            assert expected in help_record, (name, param.name)
            assert " ".join(help_record.split()) in help_text


def test_synth_assign_balance_report_run_end_to_end(tmp_path):
    corpus, assigned, balanced = tmp_path / "corpus", tmp_path / "assigned", tmp_path / "balanced"
    run("synth", "--out", str(corpus), "--images", "3000", "--concepts", "400", "--dim", "32")
    run(
        "assign",
        "--images",
        str(corpus / "images.npy"),
        "--concepts",
        str(corpus / "concepts.npy"),
        "--topk",
        "5",
        "--out",
        str(assigned),
    )
    printed = run(
        "balance",
        str(assigned),
        "--target",
        "800",
        "--seed",
        "3",
        "--out",
        str(balanced),
        "--chunk-rows",
        "4096",
    )
    assert "| effective number of concepts (exp entropy) |" in printed
    assert "selected 800 of 3,000 images" in printed
    report = run("report", str(balanced), "--vocabulary", str(corpus / "vocabulary.txt"))
    assert report.strip() == str(balanced / "report.md")
    for name in ("selected.npy", "weights.npy", "stats.json", "report.md", "rank_frequency.png"):
        assert (balanced / name).is_file(), name
    assert np.load(assigned / "ids.npy").shape == (3000, 5)
    again = run(
        "assign",
        "--images",
        str(corpus / "images.npy"),
        "--concepts",
        str(corpus / "concepts.npy"),
        "--topk",
        "5",
        "--out",
        str(assigned),
    )
    assert "assigned top-5" in again


def test_precomputed_embeddings_go_through_embed_commands_into_assign(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "img.npy", rng.standard_normal((50, 8)).astype(np.float32))
    np.save(tmp_path / "con.npy", rng.standard_normal((4, 8)).astype(np.float32))
    (tmp_path / "vocab.txt").write_text("dog\ncat\ndog\nsky\n")
    run(
        "embed-images",
        "--from-embeddings",
        str(tmp_path / "img.npy"),
        "--out",
        str(tmp_path / "I"),
        "--chunk-size",
        "16",
    )
    printed = run(
        "embed-concepts",
        str(tmp_path / "vocab.txt"),
        "--from-embeddings",
        str(tmp_path / "con.npy"),
        "--out",
        str(tmp_path / "C"),
    )
    assert "dropped 1 duplicates: line 3 'dog' repeats line 1" in printed
    assert (tmp_path / "C" / "keys.txt").read_text() == "dog\ncat\nsky\n"
    run(
        "assign",
        "--images",
        str(tmp_path / "I"),
        "--concepts",
        str(tmp_path / "C"),
        "--topk",
        "2",
        "--out",
        str(tmp_path / "A"),
    )
    ids = np.load(tmp_path / "A" / "ids.npy")
    assert ids.shape == (50, 2)
    assert set(np.unique(ids)) <= {0, 1, 2}


def test_input_errors_are_one_line_messages(tmp_path):
    out = fail(
        "assign",
        "--images",
        str(tmp_path / "nope.npy"),
        "--concepts",
        str(tmp_path / "x.npy"),
        "--out",
        str(tmp_path / "o"),
    )
    assert out.startswith("Error: ")
    assert "nope.npy: no such file" in out
    assert len(out.strip().splitlines()) == 1
    (tmp_path / "empty.txt").write_text("\n")
    out = fail(
        "embed-concepts",
        str(tmp_path / "empty.txt"),
        "--from-embeddings",
        "x.npy",
        "--out",
        str(tmp_path / "o"),
    )
    assert "empty.txt: no concepts" in out
    out = fail("embed-images", "--out", str(tmp_path / "o"))
    assert "give exactly one of --checkpoint and --from-embeddings" in out
    out = fail("balance", str(tmp_path), "--target", "5", "--out", str(tmp_path / "o"))
    assert "no manifest.json" in out
    out = fail("balance", str(tmp_path), "--target", "5", "--chunk-rows", "5000", "--out", "o")
    assert "multiple of 4096" in out
