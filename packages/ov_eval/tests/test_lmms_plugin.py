"""The lmms-eval plugin: its adapter (tested without lmms-eval) and, when importable, the class."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from ov_eval.lmms.adapter import OneVisionAdapter, place_images
from ov_eval.lmms.models import AVAILABLE_MODELS


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    from ov_model.tiny import create_tiny_model

    folder = tmp_path_factory.mktemp("model")
    create_tiny_model(folder, ["a red square and a blue circle"] * 8)
    return folder


@pytest.fixture(scope="module")
def adapter(model_folder):
    return OneVisionAdapter(model_folder)


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
    logprob, greedy = adapter.loglikelihood("Name a colour.", " red", [])
    prompt = adapter._prompt("Name a colour.", [])
    target = adapter.processor.tokenizer.encode(" red")
    ids = torch.cat([prompt.input_ids, torch.tensor(target)])[None]
    with torch.no_grad():
        logits = adapter.model(ids).logits[0].log_softmax(-1)
    start = prompt.input_ids.numel() - 1
    expected = sum(logits[start + i, token].item() for i, token in enumerate(target))
    assert logprob == pytest.approx(expected, abs=1e-4)
    argmax = [int(logits[start + i].argmax()) for i in range(len(target))]
    assert greedy == (argmax == target)


def test_plugin_registry_names_the_class():
    assert AVAILABLE_MODELS == {"onevision": "OneVision"}


@pytest.mark.skipif(
    importlib.util.find_spec("lmms_eval") is None, reason="lmms-eval is not installed (extra)"
)
def test_lmms_eval_can_import_the_model_class():
    from lmms_eval.api.model import lmms

    from ov_eval.lmms.models.onevision import OneVision

    assert issubclass(OneVision, lmms)


@pytest.mark.skipif(
    importlib.util.find_spec("lmms_eval") is None, reason="lmms-eval is not installed (extra)"
)
def test_lmms_eval_requests_reach_the_adapter(adapter, model_folder):
    """The class answers lmms-eval `Instance` requests as the adapter answers them directly."""
    from lmms_eval.api.instance import Instance

    from ov_eval.lmms.models.onevision import OneVision

    model = OneVision(pretrained=str(model_folder))
    image = Image.new("RGB", (56, 56), (10, 200, 10))
    docs = [{"image": image, "answer": " red"}, {"image": None, "answer": " blue"}]
    model.task_dict = {"toy": {"test": docs}}

    def visuals(doc):
        return [doc["image"]]

    def request(kind, arguments, doc_id):
        metadata = {"task": "toy", "doc_id": doc_id, "repeats": 1}
        return Instance(kind, arguments, idx=0, metadata=metadata)

    generate = [
        request("generate_until", (f"Q{i}?", {"max_new_tokens": 5}, visuals, i, "toy", "test"), i)
        for i in range(2)
    ]
    assert model.generate_until(generate) == [
        adapter.generate("Q0?", [image], {"max_new_tokens": 5}),
        adapter.generate("Q1?", [], {"max_new_tokens": 5}),
    ]
    likelihood = [
        request(
            "loglikelihood", ("Colour?", lambda doc: doc["answer"], visuals, i, "toy", "test"), i
        )
        for i in range(2)
    ]
    assert model.loglikelihood(likelihood) == [
        adapter.loglikelihood("Colour?", " red", [image]),
        adapter.loglikelihood("Colour?", " blue", []),
    ]


@pytest.mark.skipif(
    importlib.util.find_spec("lmms_eval") is None, reason="lmms-eval is not installed (extra)"
)
def test_lmms_eval_finds_the_model_through_the_plugin_variable():
    """`LMMS_EVAL_PLUGINS=ov_eval.lmms` makes `--model onevision` resolve to our class."""
    code = "from lmms_eval.models import get_model; print(get_model('onevision').__module__)"
    environment = {**os.environ, "LMMS_EVAL_PLUGINS": "ov_eval.lmms"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "ov_eval.lmms.models.onevision"
