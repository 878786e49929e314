"""`ov-model serve`: its flags, its one-line error without the serve extra, and the app it builds
from a checkpoint folder (uvicorn.run replaced by a stand-in that serves the app in a thread)."""

import json
import shutil
import subprocess
import sys
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

pytest.importorskip("fastapi")

from ov_model.cli import main

JSON = {"content-type": "application/json"}


def test_help_lists_the_flags():
    result = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for flag in (
        "--host",
        "--port",
        "--device",
        "--dtype",
        "--max-batch",
        "--max-queue",
        "--max-new-tokens",
        "--max-pixels",
        "--max-image-pixels",
        "--max-images",
        "--image-root",
    ):
        assert flag in result.output


def test_the_cli_imports_neither_fastapi_nor_torch():
    heavy = "{'fastapi', 'uvicorn', 'torch'}"
    code = f"import sys, ov_model.cli; print(sorted({heavy} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_without_the_serve_extra_the_command_says_how_to_install_it(monkeypatch, model_dir):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ImportError
    result = CliRunner().invoke(main, ["serve", str(model_dir)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [
        "Error: ov-model serve needs the serve extra (missing: fastapi); install it with "
        "pip install 'ov-model[serve]'"
    ]


def test_the_command_serves_the_checkpoint_with_its_flags(
    monkeypatch, model_dir, image_root, running_server
):
    import uvicorn

    answers = {}

    def serve_once(app, host, port, log_level):
        answers["bind"] = (host, port)
        with running_server(app) as url:
            parts = urlsplit(url)
            connection = HTTPConnection(parts.hostname, parts.port, timeout=60)
            body = {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "cat.png"}},
                            {"type": "text", "text": "hi"},
                        ],
                    }
                ],
                "max_tokens": 50,
            }
            connection.request("POST", "/v1/chat/completions", json.dumps(body), JSON)
            answers["too many tokens"] = json.loads(connection.getresponse().read())
            body["max_tokens"] = 3
            body["temperature"] = 0
            connection.request("POST", "/v1/chat/completions", json.dumps(body), JSON)
            answers["ok"] = json.loads(connection.getresponse().read())
            connection.close()

    monkeypatch.setattr(uvicorn, "run", serve_once)
    arguments = [
        "serve",
        str(model_dir),
        "--port",
        "8123",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--max-new-tokens",
        "20",
        "--image-root",
        str(image_root),
    ]
    result = CliRunner().invoke(main, arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert answers["bind"] == ("127.0.0.1", 8123)
    assert "--max-new-tokens" in answers["too many tokens"]["error"]["message"]
    assert answers["ok"]["model"] == model_dir.name
    assert answers["ok"]["usage"]["completion_tokens"] == 3


def test_the_command_serves_a_checkpoint_in_the_official_layout(
    monkeypatch, tmp_path, model_dir, running_server
):
    import uvicorn

    folder = tmp_path / "official"
    folder.mkdir()
    official = Path(__file__).parents[4] / "fixtures" / "llava_ov_tiny" / "hf"
    for name in ("config.json", "model.safetensors"):
        shutil.copy(official / name, folder / name)
    for source in model_dir.iterdir():  # the tokenizer and processor files of the tiny model
        if source.suffix != ".safetensors" and source.name != "config.json":
            shutil.copy(source, folder / source.name)
    answers = {}

    def serve_once(app, host, port, log_level):
        with running_server(app) as url:
            parts = urlsplit(url)
            connection = HTTPConnection(parts.hostname, parts.port, timeout=60)
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            connection.request("POST", "/v1/chat/completions", json.dumps(body), JSON)
            answers["ok"] = json.loads(connection.getresponse().read())
            connection.close()

    monkeypatch.setattr(uvicorn, "run", serve_once)
    result = CliRunner().invoke(main, ["serve", str(folder)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert answers["ok"]["model"] == "official"
    assert answers["ok"]["usage"]["completion_tokens"] >= 1
