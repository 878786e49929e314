"""Chat templates and conversations: the qwen2-vl rendering, both conversation formats, custom
templates from a model folder, and errors that name the sample, message or file."""

import json

import pytest

from ov_model.chat_template import ChatTemplate
from ov_model.conversation import ImagePart, Message, TextPart, normalize_conversation
from ov_model.processor_errors import ChatTemplateError, ConversationError

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def render(conversation, **kwargs) -> str:
    return ChatTemplate.default().render(normalize_conversation(conversation), **kwargs)


def test_text_only_turn_gets_the_default_system_prompt():
    conversation = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    assert render(conversation) == (
        f"{SYSTEM}<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
    )


def test_a_given_system_prompt_replaces_the_default():
    conversation = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"}]
    assert render(conversation) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n"
    )


def test_multi_turn_multi_image_conversation_renders_every_image_in_place():
    conversation = [
        {"from": "human", "value": "<image>\n<image>\nCompare them."},
        {"from": "gpt", "value": "The first is red."},
        {"from": "human", "value": "And <image>?"},
        {"from": "gpt", "value": "Blue."},
    ]
    assert render(conversation) == (
        f"{SYSTEM}<|im_start|>user\n{IMAGE}\n{IMAGE}\nCompare them.<|im_end|>\n"
        "<|im_start|>assistant\nThe first is red.<|im_end|>\n"
        f"<|im_start|>user\nAnd {IMAGE}?<|im_end|>\n"
        "<|im_start|>assistant\nBlue.<|im_end|>\n"
    )


def test_generation_prompt_opens_an_assistant_turn():
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}]
    assert render(conversation, add_generation_prompt=True) == (
        f"{SYSTEM}<|im_start|>user\n{IMAGE}?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_whitespace_of_contents_is_kept_verbatim():
    conversation = [{"role": "user", "content": "  a\n"}, {"role": "assistant", "content": "\nb "}]
    assert render(conversation) == (
        f"{SYSTEM}<|im_start|>user\n  a\n<|im_end|>\n<|im_start|>assistant\n\nb <|im_end|>\n"
    )


LLAVA_AND_OPENAI = [
    (
        [
            {"from": "human", "value": "<image>\nWhat is this?"},
            {"from": "gpt", "value": "A cat."},
        ],
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "\nWhat is this?"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        ],
    ),
    (
        [
            {"from": "system", "value": "Short answers."},
            {"from": "human", "value": "Left <image> right <image>"},
            {"from": "gpt", "value": "Two."},
            {"from": "human", "value": "Sure?"},
        ],
        [
            {"role": "system", "content": "Short answers."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Left "},
                    {"type": "image_url", "image_url": {"url": "x.png"}},
                    {"type": "text", "text": " right "},
                    {"image": "y.png"},
                ],
            },
            {"role": "assistant", "content": "Two."},
            {"role": "user", "content": "Sure?"},
        ],
    ),
]


@pytest.mark.parametrize(("llava", "openai"), LLAVA_AND_OPENAI)
def test_llava_and_openai_formats_normalise_and_render_identically(llava, openai):
    assert normalize_conversation(llava) == normalize_conversation(openai)
    for prompt in (False, True):
        assert render(llava, add_generation_prompt=prompt) == render(
            openai, add_generation_prompt=prompt
        )


def test_image_placeholders_in_openai_text_are_images_too():
    messages = normalize_conversation(
        [{"role": "user", "content": [{"type": "text", "text": "<image>a<image>"}]}]
    )
    assert messages == (Message("user", (ImagePart(), TextPart("a"), ImagePart())),)
    assert normalize_conversation(
        [{"role": "user", "content": "<image>"}]
    ) == normalize_conversation([{"role": "user", "content": [{"type": "image"}]}])


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        ([], r"sample 's1': the conversation has no message"),
        ("hello", r"sample 's1': a conversation is a list of messages, got str"),
        ([{"from": "bot", "value": "x"}], r"sample 's1', message 0: unknown role 'bot'"),
        (
            [{"role": "user", "content": "a"}, {"speaker": "user", "text": "b"}],
            r"sample 's1', message 1: neither LLaVA style",
        ),
        (
            [{"role": "user", "content": [{"type": "video"}]}],
            r"sample 's1', message 0, content item 0: video content is not supported",
        ),
        (
            [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]}],
            r"message 0, content item 0: unsupported content item",
        ),
        ([{"role": "user", "content": None}], r"message 0: 'content' must be a string or a list"),
        ([{"from": "human", "value": ["x"]}], r"message 0: LLaVA-style 'value' must be a string"),
    ],
)
def test_malformed_conversations_are_errors_naming_sample_and_message(conversation, message):
    with pytest.raises(ConversationError, match=message) as raised:
        normalize_conversation(conversation, sample_id="s1")
    assert raised.value.sample_id == "s1"


CUSTOM = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}<|im_end|>{% endfor %}"


def test_custom_template_is_read_from_chat_template_jinja(tmp_path):
    (tmp_path / "chat_template.jinja").write_text(CUSTOM)
    template = ChatTemplate.from_dir(tmp_path)
    assert template.origin == str(tmp_path / "chat_template.jinja")
    messages = normalize_conversation([{"role": "user", "content": "hi"}])
    assert template.render(messages) == "[user]hi<|im_end|>"


def test_template_search_order_is_jinja_then_json_then_tokenizer_config(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "config"}))
    assert ChatTemplate.from_dir(tmp_path).source == "config"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "json"}))
    assert ChatTemplate.from_dir(tmp_path).source == "json"
    (tmp_path / "chat_template.jinja").write_text("jinja")
    assert ChatTemplate.from_dir(tmp_path).source == "jinja"


def test_named_templates_of_tokenizer_config_take_the_default(tmp_path):
    templates = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "d"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": templates}))
    assert ChatTemplate.from_dir(tmp_path).source == "d"


def test_a_folder_without_a_template_gets_the_qwen2_vl_default(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 8}))
    template = ChatTemplate.from_dir(tmp_path)
    assert template == ChatTemplate.default()
    assert "qwen2_vl.jinja" in template.origin


def test_saved_template_loads_back(tmp_path):
    ChatTemplate(CUSTOM, "custom").save(tmp_path)
    assert ChatTemplate.from_dir(tmp_path).source == CUSTOM
    # A stale chat_template.jinja (which would win the search) is rewritten too.
    (tmp_path / "chat_template.jinja").write_text("stale")
    ChatTemplate.default().save(tmp_path)
    assert ChatTemplate.from_dir(tmp_path) == ChatTemplate.default()


def test_syntax_error_names_the_file_and_line(tmp_path):
    (tmp_path / "chat_template.jinja").write_text("ok\n{% for m in messages %}")
    with pytest.raises(
        ChatTemplateError, match=r"chat_template\.jinja: chat template syntax error"
    ):
        ChatTemplate.from_dir(tmp_path)


def test_unreadable_template_json_names_the_file(tmp_path):
    (tmp_path / "chat_template.json").write_text("{")
    with pytest.raises(ChatTemplateError, match=r"chat_template\.json: cannot read JSON"):
        ChatTemplate.from_dir(tmp_path)
    (tmp_path / "chat_template.json").write_text("{}")
    with pytest.raises(ChatTemplateError, match=r"chat_template\.json: no 'chat_template' string"):
        ChatTemplate.from_dir(tmp_path)


def test_templates_run_sandboxed_and_cannot_mutate_their_inputs():
    template = ChatTemplate("{{ messages.append(1) }}", "evil.jinja")
    messages = normalize_conversation([{"role": "user", "content": "hi"}])
    with pytest.raises(ChatTemplateError, match=r"evil\.jinja: rendering sample 'x' failed"):
        template.render(messages, sample_id="x")


def test_raise_exception_in_a_template_refuses_the_conversation_by_sample():
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}",
        "strict.jinja",
    )
    messages = normalize_conversation([{"role": "user", "content": "hi"}])
    with pytest.raises(ConversationError, match=r"sample 7: refused .*strict\.jinja: system first"):
        template.render(messages, sample_id=7)
