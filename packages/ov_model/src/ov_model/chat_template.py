"""Chat templates: conversations -> the text the model reads, rendered with jinja2.

The default is the qwen2-vl template that LLaVA-OneVision-1.5 was trained with
(`templates/qwen2_vl.jinja`): a default system prompt "You are a helpful assistant." when the
conversation does not start with one, every message as `<|im_start|>role\\n...<|im_end|>\\n`, an
image as `<|vision_start|><|image_pad|><|vision_end|>`, and `<|im_start|>assistant\\n` appended
for generation. A model folder can bring its own template, found as transformers looks for it:
`chat_template.jinja`, else `chat_template.json` (`{"chat_template": ...}`), else the
`chat_template` of `tokenizer_config.json` (a string, or a list of named templates of which
"default" is taken).

Templates are code that comes with downloaded checkpoints, so they run in jinja2's immutable
sandbox (no attribute access to Python internals, no mutation of the inputs) with the settings
transformers uses (`trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`, a `tojson`
that keeps non-ASCII text), so a template renders here as it does there.

Templates receive messages as transformers passes them: `{"role", "content"}` with string content
for text-only messages and a list of `{"type": "image"}` / `{"type": "text", "text"}` items
otherwise (the qwen2-vl template renders both the same way).
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ov_model.conversation import ImagePart, Message, TextPart
from ov_model.processor_errors import ChatTemplateError, ConversationError, describe_sample

DEFAULT_TEMPLATE_RESOURCE = "templates/qwen2_vl.jinja"
CHAT_TEMPLATE_JINJA = "chat_template.jinja"
CHAT_TEMPLATE_JSON = "chat_template.json"
TOKENIZER_CONFIG_JSON = "tokenizer_config.json"

TemplateMessage = dict[str, Any]


class _TemplateRaised(jinja2.TemplateError):
    """What a template's `raise_exception(...)` raises: it refuses the conversation."""


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRaised(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    return environment


def to_template_messages(
    messages: Sequence[Message], wrap: Mapping[int, tuple[str, str]] | None = None
) -> list[TemplateMessage]:
    """Messages -> the dicts a template reads. `wrap[i] = (before, after)` adds text around
    message i's content (used to find where a template put an answer)."""
    result: list[TemplateMessage] = []
    for index, message in enumerate(messages):
        parts: list[Any] = list(message.parts)
        if wrap and index in wrap:
            before, after = wrap[index]
            parts = [TextPart(before), *parts, TextPart(after)]
        content: str | list[dict[str, str]]
        if any(isinstance(part, ImagePart) for part in parts):
            content = [
                {"type": "image"}
                if isinstance(part, ImagePart)
                else {"type": "text", "text": part.text}
                for part in parts
            ]
        else:
            content = "".join(part.text for part in parts)
        result.append({"role": message.role, "content": content})
    return result


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template and where it came from (`origin`, for error messages; two
    templates are equal when their sources are)."""

    source: str
    origin: str = field(compare=False)
    _compiled: jinja2.Template = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise ChatTemplateError(f"{self.origin}: the chat template is empty")
        try:
            compiled = _environment().from_string(self.source)
        except jinja2.TemplateSyntaxError as error:
            raise ChatTemplateError(
                f"{self.origin}: chat template syntax error at line {error.lineno}: {error.message}"
            ) from None
        object.__setattr__(self, "_compiled", compiled)

    @classmethod
    def default(cls) -> "ChatTemplate":
        """The qwen2-vl template shipped with ov_model."""
        source = (resources.files("ov_model") / DEFAULT_TEMPLATE_RESOURCE).read_text("utf-8")
        return cls(source, f"ov_model default template ({DEFAULT_TEMPLATE_RESOURCE})")

    @classmethod
    def from_file(cls, path: str | Path) -> "ChatTemplate":
        """A template from a `.jinja` file, `chat_template.json`, or `tokenizer_config.json`."""
        file = Path(path)
        if file.suffix != ".json":
            try:
                return cls(file.read_text(encoding="utf-8"), str(file))
            except (OSError, UnicodeDecodeError) as error:
                raise ChatTemplateError(
                    f"{file}: cannot read the chat template ({error})"
                ) from None
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ChatTemplateError(f"{file}: cannot read JSON ({error})") from None
        template = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(template, list):
            named = {
                entry.get("name"): entry.get("template")
                for entry in template
                if isinstance(entry, dict)
            }
            if "default" not in named:
                raise ChatTemplateError(
                    f"{file}: 'chat_template' is a list without a 'default' entry "
                    f"(names: {sorted(map(str, named))})"
                )
            template = named["default"]
        if not isinstance(template, str):
            raise ChatTemplateError(f"{file}: no 'chat_template' string")
        return cls(template, str(file))

    @classmethod
    def from_dir(cls, directory: str | Path) -> "ChatTemplate":
        """The template a model folder brings (see the module docstring for the search order),
        or the default when it brings none."""
        folder = Path(directory)
        for name in (CHAT_TEMPLATE_JINJA, CHAT_TEMPLATE_JSON):
            if (folder / name).is_file():
                return cls.from_file(folder / name)
        config = folder / TOKENIZER_CONFIG_JSON
        if config.is_file():
            try:
                data = json.loads(config.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ChatTemplateError(f"{config}: cannot read JSON ({error})") from None
            if isinstance(data, dict) and data.get("chat_template") is not None:
                return cls.from_file(config)
        return cls.default()

    def save(self, directory: str | Path) -> Path:
        """Write `chat_template.json` (the layout transformers 4.5x reads) into `directory`.
        A `chat_template.jinja` already there would take precedence, so it is rewritten too."""
        folder = Path(directory)
        file = folder / CHAT_TEMPLATE_JSON
        text = json.dumps({"chat_template": self.source}, ensure_ascii=False, indent=2)
        file.write_text(text + "\n", encoding="utf-8")
        if (folder / CHAT_TEMPLATE_JINJA).is_file():
            (folder / CHAT_TEMPLATE_JINJA).write_text(self.source, encoding="utf-8")
        return file

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = False,
        sample_id: str | int | None = None,
    ) -> str:
        """The text of a conversation (with `<|im_start|>assistant\\n` appended for
        generation when `add_generation_prompt`)."""
        return self.render_template_messages(
            to_template_messages(messages),
            add_generation_prompt=add_generation_prompt,
            sample_id=sample_id,
        )

    def render_template_messages(
        self,
        template_messages: list[TemplateMessage],
        *,
        add_generation_prompt: bool = False,
        sample_id: str | int | None = None,
    ) -> str:
        """Render messages already in the template's dict form."""
        try:
            return self._compiled.render(
                messages=template_messages, add_generation_prompt=add_generation_prompt
            )
        except _TemplateRaised as error:
            raise ConversationError(
                f"{describe_sample(sample_id)}: refused by the chat template {self.origin}: "
                f"{error.message}",
                sample_id=sample_id,
            ) from None
        except (
            jinja2.TemplateError,
            TypeError,
            ValueError,
            LookupError,
            AttributeError,
            ArithmeticError,
        ) as error:
            raise ChatTemplateError(
                f"{self.origin}: rendering {describe_sample(sample_id)} failed: "
                f"{type(error).__name__}: {error}"
            ) from None
