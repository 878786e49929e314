"""The lmms-eval plugin: its adapter (tested without lmms-eval) and, when importable, the class,
its discovery by lmms-eval (entry point and `LMMS_EVAL_PLUGINS`) and a local lmms-eval run."""

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from PIL import Image

from ov_eval.lmms.adapter import ContinuationScore, OneVisionAdapter, place_images
from ov_eval.lmms.manifest import CLASS_PATH, MODEL_ID
from ov_eval.lmms.models import AVAILABLE_MODELS

requires_lmms_eval = pytest.mark.skipif(
    importlib.util.find_spec("lmms_eval") is None, reason="lmms-eval is not installed (extra)"
)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    from ov_model.tiny import create_tiny_model

    folder = tmp_path_factory.mktemp("model")
    create_tiny_model(folder, ["a red square and a blue circle"] * 8)
    return folder


@pytest.fixture(scope="module")
def adapter(model_folder):
    return OneVisionAdapter(model_folder)


@pytest.fixture(scope="module")
def lmms_model(model_folder):
    """The lmms-eval class on the tiny checkpoint."""
    from ov_eval.lmms.models.onevision import OneVision

    return OneVision(pretrained=str(model_folder))


def lmms_eval_environment(**extra: str) -> dict[str, str]:
    """The environment of an lmms-eval subprocess: offline, no `LMMS_EVAL_PLUGINS` unless given."""
    environment = {k: v for k, v in os.environ.items() if k != "LMMS_EVAL_PLUGINS"}
    return {**environment, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra}


def run_python(code: str, *arguments: str, environment: dict[str, str]) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON object as its last stdout line."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Failed to load model entry-point manifests" not in result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_images_go_first_unless_the_context_places_them():
    assert place_images("Describe.", 2) == "<image>\n<image>\nDescribe."
    assert place_images("<image>\nDescribe.", 1) == "<image>\nDescribe."
    assert place_images("<image> stray Describe.", 2) == "<image>\n<image>\nstray Describe."


def test_greedy_generation_matches_the_model_and_cuts_at_until(adapter):
    image = Image.new("RGB", (56, 56), (250, 10, 10))
    free = adapter.generate("What is it?", [image], {"max_new_tokens": 6})
    prompt = adapter._prompt("What is it?", [image])
    ids = adapter.model.generate(
        [prompt.input_ids],
        pixel_values=prompt.pixel_values,
        image_grid_thw=prompt.image_grid_thw,
        max_new_tokens=6,
        stop_token_ids=adapter.stop_token_ids,
    )[0]
    assert free == adapter.processor.decode(ids)
    if len(free) > 2:
        cut = adapter.generate("What is it?", [image], {"max_new_tokens": 6, "until": free[2]})
        assert cut == free[: free.index(free[2])]


def test_loglikelihood_is_the_sum_of_token_log_probabilities(adapter):
    score = adapter.loglikelihood("Name a colour.", " red", [])
    prompt = adapter._prompt("Name a colour.", [])
    target = adapter.processor.tokenizer.encode(" red")
    ids = torch.cat([prompt.input_ids, torch.tensor(target)])[None]
    with torch.no_grad():
        logits = adapter.model(ids).logits[0].log_softmax(-1)
    start = prompt.input_ids.numel() - 1
    expected = sum(logits[start + i, token].item() for i, token in enumerate(target))
    assert score.logprob == pytest.approx(expected, abs=1e-4)
    assert score.num_tokens == len(target)
    assert score.loss == pytest.approx(-expected / len(target), abs=1e-4)
    argmax = [int(logits[start + i].argmax()) for i in range(len(target))]
    assert score.greedy == (argmax == target)


def test_an_empty_continuation_has_no_loss(adapter):
    assert adapter.loglikelihood("Name a colour.", "", []) == ContinuationScore(0.0, 0, True)
    assert ContinuationScore(0.0, 0, True).loss == 0.0


def test_generation_keeps_blank_lines_as_llava_onevision1_5_does(adapter, monkeypatch):
    """lmms-eval's default `until` ["\n\n"] is dropped; the task's other stop strings still cut."""
    monkeypatch.setattr(adapter.processor, "decode", lambda ids: "One.\n\nTwo. Three")
    assert adapter.generate("Count.", [], {"max_new_tokens": 2, "until": "\n\n"}) == (
        "One.\n\nTwo. Three"
    )
    assert adapter.generate("Count.", [], {"max_new_tokens": 2, "until": ["\n\n", "T"]}) == (
        "One.\n\n"
    )


def test_plugin_registry_names_the_class():
    assert AVAILABLE_MODELS == {"onevision": "OneVision"}
    assert CLASS_PATH == "ov_eval.lmms.models.onevision.OneVision"


def test_ov_eval_declares_the_lmms_eval_entry_point():
    """The installed metadata carries the entry point; its module imports without lmms-eval."""
    (entry_point,) = importlib.metadata.entry_points(group="lmms_eval.models", name=MODEL_ID)
    assert entry_point.value == "ov_eval.lmms.manifest:onevision_manifest"
    assert entry_point.dist.name == "ov-eval"


@requires_lmms_eval
def test_the_manifest_registers_onevision_as_a_simple_model():
    from lmms_eval.models.registry_v2 import ModelManifest

    from ov_eval.lmms.manifest import onevision_manifest

    assert onevision_manifest() == ModelManifest(model_id="onevision", simple_class_path=CLASS_PATH)


@requires_lmms_eval
def test_lmms_eval_can_import_the_model_class():
    from lmms_eval.api.model import lmms

    from ov_eval.lmms.models.onevision import OneVision

    assert issubclass(OneVision, lmms)
    assert OneVision.is_simple
    assert not OneVision.__abstractmethods__


def toy_request(kind, arguments, doc_id):
    from lmms_eval.api.instance import Instance

    metadata = {"task": "toy", "doc_id": doc_id, "repeats": 1}
    return Instance(kind, arguments, idx=0, metadata=metadata)


@requires_lmms_eval
def test_lmms_eval_requests_reach_the_adapter(adapter, lmms_model):
    """The class answers lmms-eval `Instance` requests as the adapter answers them directly, the
    log-likelihood as the loss (what lmms-eval's multiple-choice scorer minimises)."""
    image = Image.new("RGB", (56, 56), (10, 200, 10))
    docs = [{"image": image, "answer": " red"}, {"image": None, "answer": " blue"}]
    lmms_model.task_dict = {"toy": {"test": docs}}

    def visuals(doc):
        return [doc["image"]]

    generate = [
        toy_request(
            "generate_until", (f"Q{i}?", {"max_new_tokens": 5}, visuals, i, "toy", "test"), i
        )
        for i in range(2)
    ]
    assert lmms_model.generate_until(generate) == [
        adapter.generate("Q0?", [image], {"max_new_tokens": 5}),
        adapter.generate("Q1?", [], {"max_new_tokens": 5}),
    ]
    likelihood = [
        toy_request(
            "loglikelihood", ("Colour?", lambda doc: doc["answer"], visuals, i, "toy", "test"), i
        )
        for i in range(2)
    ]
    scores = [
        adapter.loglikelihood("Colour?", " red", [image]),
        adapter.loglikelihood("Colour?", " blue", []),
    ]
    assert lmms_model.loglikelihood(likelihood) == [(s.loss, s.greedy) for s in scores]


@requires_lmms_eval
def test_multi_round_requests_follow_the_tasks_doc_to_text(adapter, lmms_model):
    """Round 0 answers the context; then `doc_to_text` gets the answers so far and gives the next
    context and visuals until it signals the end; the result is one answer per round."""
    from lmms_eval.api.instance import unwrap_generation_output

    image = Image.new("RGB", (56, 56), (10, 10, 200))
    lmms_model.task_dict = {"toy": {"test": [{"image": image, "rounds": 3}]}}
    calls = []

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        calls.append((round_idx, list(previous_output), previous_round_info))
        if round_idx == doc["rounds"]:
            return None, None, True, previous_output, None
        context = f"Round {round_idx} after {previous_output[-1]!r}?"
        return [doc["image"], None], context, False, previous_output, round_idx

    settings = {"max_new_tokens": 4}
    arguments = ("Round 0?", settings, lambda doc: [doc["image"]], doc_to_text, 0, "toy", "test")
    [answers] = lmms_model.generate_until_multi_round(
        [toy_request("generate_until_multi_round", arguments, 0)]
    )
    expected = [adapter.generate("Round 0?", [image], settings)]
    for round_index in (1, 2):
        context = f"Round {round_index} after {expected[-1]!r}?"
        expected.append(adapter.generate(context, [image], settings))
    assert answers == expected
    assert calls == [(1, expected[:1], None), (2, expected[:2], 1), (3, expected, 2)]
    assert unwrap_generation_output(answers) == (answers, None)  # kept per round by lmms-eval


@requires_lmms_eval
def test_lmms_eval_multiple_choice_picks_the_most_likely_choice(adapter, lmms_model, tmp_path):
    """lmms-eval's own multiple-choice task builds the requests and scores the class's answers
    (argmin of the loss): the choice with the highest mean token log-probability wins."""
    with warnings.catch_warnings():
        # lmms_eval/filters/extraction.py holds an invalid escape ("\s" in a docstring): a
        # warning when compiled, which the suite's filterwarnings=error would make an error.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        import lmms_eval.api.metrics  # noqa: F401  (registers the metrics a task config names)
        from lmms_eval.api.task import ConfigurableTask

    image = Image.new("RGB", (56, 56), (200, 200, 10))
    choices = ["red", "blue", "green"]
    scores = [adapter.loglikelihood("Colour?", f" {choice}", [image]) for choice in choices]
    likeliest = max(range(len(choices)), key=lambda i: scores[i].logprob / scores[i].num_tokens)
    labels = [likeliest, (likeliest + 1) % len(choices)]
    rows = [{"question": "Colour?", "choices": choices, "label": label} for label in labels]
    (tmp_path / "choice.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = ConfigurableTask(
        config={
            "task": "ov_toy_choice",
            "dataset_path": "json",
            "dataset_kwargs": {
                "data_files": {"test": str(tmp_path / "choice.jsonl")},
                "cache_dir": str(tmp_path / "cache"),
            },
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_visual": lambda doc: [image],
            "doc_to_text": "question",
            "doc_to_target": "label",
            "doc_to_choice": "choices",
            "metric_list": [{"metric": "acc"}],
        }
    )
    docs = task.test_docs()
    lmms_model.task_dict = {"ov_toy_choice": {"test": docs}}
    accuracy = []
    for doc_id, doc in enumerate(docs):
        metadata = {"task": "ov_toy_choice", "doc_id": doc_id, "repeats": 1, "split": "test"}
        requests = task.construct_requests(doc_id=doc_id, ctx="Colour?", metadata=metadata)
        accuracy.append(task.process_results(doc, lmms_model.loglikelihood(requests))["acc"])
    assert accuracy == [1.0, 0.0]


ENTRY_POINT_RESOLUTION = """
    import json, sys
    from lmms_eval.models import get_model, get_model_manifest

    manifest = get_model_manifest("onevision")
    model_class = get_model("onevision")
    # as lmms_eval.evaluator.simple_evaluate builds the model from --model_args
    model = model_class.create_from_arg_string(
        f"pretrained={sys.argv[1]},max_pixels=50176",
        {"batch_size": "1", "max_batch_size": None, "device": None},
    )
    print(json.dumps({
        "simple": manifest.simple_class_path,
        "chat": manifest.chat_class_path,
        "class": f"{model_class.__module__}.{model_class.__qualname__}",
        "answer": type(model.generate_until([])).__name__,
    }))
"""


@requires_lmms_eval
def test_lmms_eval_finds_the_model_through_the_entry_point(model_folder):
    """Without `LMMS_EVAL_PLUGINS`, lmms-eval's own resolution finds and builds `onevision`."""
    found = run_python(
        ENTRY_POINT_RESOLUTION, str(model_folder), environment=lmms_eval_environment()
    )
    assert found == {"simple": CLASS_PATH, "chat": None, "class": CLASS_PATH, "answer": "list"}


PLUGIN_VARIABLE_RESOLUTION = """
    import importlib.metadata as metadata
    import json

    def entry_points_but_lmms_eval_models(**selection):
        found = metadata.EntryPoints(
            entry_point
            for distribution in metadata.distributions()
            for entry_point in distribution.entry_points
            if entry_point.group != "lmms_eval.models"
        )
        return found.select(**selection) if selection else found

    # lmms-eval's registry binds importlib.metadata.entry_points when it is imported
    metadata.entry_points = entry_points_but_lmms_eval_models
    from lmms_eval.models import get_model, get_model_manifest

    model_class = get_model("onevision")
    print(json.dumps({
        "simple": get_model_manifest("onevision").simple_class_path,
        "class": f"{model_class.__module__}.{model_class.__qualname__}",
    }))
"""


@requires_lmms_eval
def test_lmms_eval_finds_the_model_through_the_plugin_variable():
    """`LMMS_EVAL_PLUGINS=ov_eval.lmms` alone (the entry point hidden) resolves `onevision`."""
    environment = lmms_eval_environment(LMMS_EVAL_PLUGINS="ov_eval.lmms")
    found = run_python(PLUGIN_VARIABLE_RESOLUTION, environment=environment)
    assert found == {"simple": CLASS_PATH, "class": CLASS_PATH}


TOY_TASK_FUNCTIONS = """
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None, previous_output=None, round_idx=None,
                previous_round_info=None):
    if round_idx is None:
        return doc["question"]
    if round_idx == 2:
        return None, None, True, previous_output, None
    return doc_to_visual(doc), "Are you sure?", False, previous_output, None


def two_rounds(doc, results):
    return {"two_rounds": float(len(results[0]) == 2)}
"""

TOY_TASK = """
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_visual: !function toy_functions.doc_to_visual
doc_to_text: !function toy_functions.doc_to_text
doc_to_target: answer
"""


def write_toy_tasks(folder) -> list[str]:
    """Two lmms-eval tasks over a local JSON Lines file: one answer, and two rounds per sample."""
    folder.mkdir()
    Image.new("RGB", (56, 56), (250, 10, 10)).save(folder / "red.png")
    rows = [
        {"question": f"Colour {i}?", "answer": "red", "image": str(folder / "red.png")}
        for i in range(3)
    ]
    (folder / "toy.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "toy_functions.py").write_text(TOY_TASK_FUNCTIONS)
    common = TOY_TASK.format(data=folder / "toy.jsonl")
    (folder / "ov_toy_answer.yaml").write_text(
        common
        + "task: ov_toy_answer\noutput_type: generate_until\n"
        + "generation_kwargs:\n  max_new_tokens: 4\n"
        + "metric_list:\n  - metric: exact_match\n    aggregation: mean\n"
        + "    higher_is_better: true\n"
    )
    (folder / "ov_toy_rounds.yaml").write_text(
        common
        + "task: ov_toy_rounds\noutput_type: generate_until_multi_round\n"
        + "generation_kwargs:\n  max_new_tokens: 4\n"
        + "process_results: !function toy_functions.two_rounds\n"
        + "metric_list:\n  - metric: two_rounds\n    aggregation: mean\n"
        + "    higher_is_better: true\n"
    )
    return ["ov_toy_answer", "ov_toy_rounds"]


@pytest.mark.slow
@requires_lmms_eval
def test_lmms_eval_runs_a_local_task_end_to_end(model_folder, tmp_path):
    """`python -m lmms_eval --model onevision` (entry point only, offline) runs a generation and a
    multi-round task from local files and writes its results."""
    tasks = write_toy_tasks(tmp_path / "tasks")
    command = [
        sys.executable, "-m", "lmms_eval", "--model", "onevision",
        "--model_args", f"pretrained={model_folder}", "--tasks", ",".join(tasks),
        "--include_path", str(tmp_path / "tasks"), "--limit", "2",
        "--output_path", str(tmp_path / "out"),
    ]  # fmt: skip
    environment = lmms_eval_environment(HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run(
        command, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    log = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, log
    results_files = list((tmp_path / "out").rglob("*_results.json"))
    assert len(results_files) == 1, log  # lmms-eval logs a failed evaluation and exits with 0
    results = json.loads(results_files[0].read_text())
    assert results["config"]["model_backend"] == f"{CLASS_PATH} (simple)"
    assert results["results"]["ov_toy_answer"]["exact_match,none"] in (0.0, 0.5, 1.0)
    assert results["results"]["ov_toy_rounds"]["two_rounds,none"] == 1.0
