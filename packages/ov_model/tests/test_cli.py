"""The `ov-model` entry point: help and version."""

import pathlib
import tomllib

import pytest
import torch
from click.testing import CliRunner

from ov_model import __version__
from ov_model.cli import main

PYPROJECT = pathlib.Path(__file__).parents[1] / "pyproject.toml"


def test_version_flag_prints_the_version_declared_in_pyproject():
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"ov-model, version {declared}"
    assert __version__ == declared


def test_help_describes_the_package():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: ov-model" in result.output


def _run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_info_convert_and_chat_on_a_tiny_checkpoint(tmp_path):
    from PIL import Image

    from ov_model.model import LlavaOV
    from ov_model.tiny import create_tiny_model

    model, processor = create_tiny_model(tmp_path / "tiny", ["a red circle on a blue square"] * 4)
    shown = _run("info", str(tmp_path / "tiny"))
    assert f"{model.num_parameters():,}" in shown
    assert "Qwen3 2 layers" in shown

    _run(
        "convert",
        str(tmp_path / "tiny"),
        "--store-dtype",
        "bfloat16",
        "--out",
        str(tmp_path / "bf16"),
    )
    converted = LlavaOV.from_pretrained(tmp_path / "bf16")
    assert {p.dtype for p in converted.parameters()} == {torch.bfloat16}
    assert (tmp_path / "bf16" / "tokenizer.json").is_file()

    Image.new("RGB", (60, 40), (200, 30, 30)).save(tmp_path / "red.png")
    answer = _run(
        "chat",
        "--model",
        str(tmp_path / "tiny"),
        "--image",
        str(tmp_path / "red.png"),
        "--max-new-tokens",
        "5",
        "what colour?",
    )
    sample = processor.prompt(
        [{"from": "human", "value": "<image>\nwhat colour?"}], images=[tmp_path / "red.png"]
    )
    special = processor.tokenizer.special
    expected = model.generate(
        [sample.input_ids],
        pixel_values=sample.pixel_values,
        image_grid_thw=sample.image_grid_thw,
        max_new_tokens=5,
        stop_token_ids=(special.im_end, special.endoftext),
    )[0]
    assert answer.rstrip("\n") == processor.decode(expected)


def test_bad_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = CliRunner().invoke(main, ["info", str(tmp_path)])
    assert result.exit_code == 2
    assert "model_type None is not 'llavaonevision1_5'" in result.output
    assert "Traceback" not in result.output


def test_chat_help_shows_device_with_its_default():
    shown = " ".join(_run("chat", "--help").split())  # the help text wraps at the terminal width
    assert "--device [auto|cpu|cuda|cuda:N]" in shown
    assert "[default: auto]" in shown.split("--device", 1)[1].split(" -h, --help", 1)[0]


def test_chat_loads_the_model_on_the_device_given(tmp_path, monkeypatch):
    from ov_model.model import LlavaOV
    from ov_model.tiny import create_tiny_model

    create_tiny_model(tmp_path / "tiny", ["a red circle on a blue square"] * 4)
    devices = []
    load = LlavaOV.from_pretrained.__func__

    def recording(cls, path, dtype=None, *, device="cpu"):
        devices.append(device)
        return load(cls, path, dtype)  # on the CPU, whatever the device asked for

    monkeypatch.setattr(LlavaOV, "from_pretrained", classmethod(recording))
    model = str(tmp_path / "tiny")
    _run("chat", "--model", model, "--max-new-tokens", "2", "--device", "cpu", "hi")
    _run("chat", "--model", model, "--max-new-tokens", "2", "hi")  # auto
    assert devices == ["cpu", "cuda" if torch.cuda.is_available() else "cpu"]


def test_chat_refuses_a_device_torch_does_not_know_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = CliRunner().invoke(main, ["chat", "--model", str(tmp_path), "--device", "gpu", "hi"])
    assert result.exit_code == 2
    assert "Invalid value for '--device'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_chat_refuses_cuda_where_there_is_none_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = CliRunner().invoke(main, ["chat", "--model", str(tmp_path), "--device", "cuda", "hi"])
    assert result.exit_code == 2
    assert "no CUDA device is available" in result.output
