"""The official `openai` client against the test server: the answers are `LlavaOV.generate`'s.

Every greedy request is checked against `Served.reference_answer`: the same conversation rendered
by the processor, generated alone by `LlavaOV.generate`, decoded with special tokens dropped.
"""

import openai
import pytest

pytest.importorskip("openai")

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=60)


def _create(client, served, messages, **settings):
    settings.setdefault("temperature", 0)
    settings.setdefault("max_tokens", MAX_TOKENS)
    return client.chat.completions.create(model=served.model_name, messages=messages, **settings)


def test_models_lists_the_served_checkpoint(client, served):
    (model,) = client.models.list().data
    assert model.id == served.model_name
    assert client.models.retrieve(served.model_name).id == served.model_name


def test_a_plain_greedy_answer_equals_generate(client, served):
    completion = _create(client, served, [{"role": "user", "content": "what colour is it?"}])
    text, prompt_tokens, completion_tokens = served.reference_answer(
        [{"role": "user", "content": "what colour is it?"}], max_tokens=MAX_TOKENS
    )
    (choice,) = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == text
    assert choice.finish_reason in ("stop", "length")
    assert completion.model == served.model_name
    assert completion.usage.prompt_tokens == prompt_tokens
    assert completion.usage.completion_tokens == completion_tokens
    assert completion.usage.total_tokens == prompt_tokens + completion_tokens


def test_a_streamed_answer_adds_up_to_the_plain_one_with_usage_at_the_end(client, served):
    messages = [{"role": "user", "content": "describe the picture"}]
    text, prompt_tokens, completion_tokens = served.reference_answer(
        messages, max_tokens=MAX_TOKENS
    )
    stream = _create(client, served, messages, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert "".join(pieces) == text
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finish[-1] in ("stop", "length")
    assert all(reason is None for reason in finish[:-1])
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens, completion_tokens)


def test_a_data_url_image_answer_equals_generate(
    client, served, make_png, make_data_url, decode_png
):
    data = make_png(width=48, height=36, seed=4)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": make_data_url(data)}},
                {"type": "text", "text": "what is in the picture?"},
            ],
        }
    ]
    reference = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "what is in the picture?"}],
        }
    ]
    text, prompt_tokens, _ = served.reference_answer(
        reference, [decode_png(data)], max_tokens=MAX_TOKENS
    )
    completion = _create(client, served, messages)
    assert completion.choices[0].message.content == text
    assert completion.usage.prompt_tokens == prompt_tokens


def test_a_multi_turn_multi_image_conversation_equals_generate(
    client, served, make_png, make_data_url, decode_png
):
    first = make_png(seed=6)
    messages = [
        {"role": "system", "content": "answer briefly"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "compare"},
                {"type": "image_url", "image_url": {"url": make_data_url(first)}},
                {"type": "text", "text": "with"},
                {"type": "image_url", "image_url": {"url": "sub/dog.png"}},
            ],
        },
        {"role": "assistant", "content": "the square is red"},
        {"role": "user", "content": "and this one?"},
    ]
    reference = [
        {"role": "system", "content": "answer briefly"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "compare"},
                {"type": "image"},
                {"type": "text", "text": "with"},
                {"type": "image"},
            ],
        },
        {"role": "assistant", "content": "the square is red"},
        {"role": "user", "content": "and this one?"},
    ]
    dog = decode_png((served.image_root / "sub" / "dog.png").read_bytes())
    text, prompt_tokens, _ = served.reference_answer(
        reference, [decode_png(first), dog], max_tokens=MAX_TOKENS
    )
    completion = _create(client, served, messages)
    assert completion.choices[0].message.content == text
    assert completion.usage.prompt_tokens == prompt_tokens


def test_seeded_sampling_repeats_itself(client, served):
    messages = [{"role": "user", "content": "tell me about cats"}]
    answers = {
        _create(client, served, messages, temperature=1.0, top_p=0.9, seed=11)
        .choices[0]
        .message.content
        for _ in range(2)
    }
    assert len(answers) == 1


def test_errors_are_raised_as_openai_exceptions(client, served):
    remote = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}],
        }
    ]
    with pytest.raises(openai.BadRequestError, match="remote image URLs are not fetched") as caught:
        _create(client, served, remote)
    assert caught.value.code == "remote_image_url"
    assert caught.value.param == "messages[0].content[0].image_url.url"
    with pytest.raises(openai.BadRequestError, match="unknown field 'frobnicate'"):
        _create(client, served, [{"role": "user", "content": "hi"}], extra_body={"frobnicate": 1})
    with pytest.raises(openai.BadRequestError, match="only n = 1"):
        _create(client, served, [{"role": "user", "content": "hi"}], n=2)
    with pytest.raises(openai.BadRequestError, match="context") as caught:
        _create(client, served, [{"role": "user", "content": "hi"}], max_tokens=100_000)
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError, match="no model"):
        client.models.retrieve("another-model")
    # and the server still answers
    assert _create(client, served, [{"role": "user", "content": "hi"}], max_tokens=2).choices
