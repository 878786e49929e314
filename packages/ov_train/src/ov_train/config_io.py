"""Recipes to and from TOML, and dotted `--set section.key=value` overrides.

A recipe file is the `Recipe` dataclasses written as TOML: top-level `name`, `stage`,
`description`, one table per section. A file may start from a named recipe with
`base = "stage2-8b"` and give only what differs. Unset optional values (`None`) are left out of
the file, since TOML has no null: reading a file back gives the same recipe.

An override is parsed with the type of the field it sets, so `--set optim.lr=2e-5` is a float,
`--set model.trainable=projector,llm` a tuple of names, `--set optim.betas=[0.9,0.999]` (or
`0.9,0.999`) a pair of floats, `--set model.path=none` clears an optional value. A nested
table (`[train.lora]`) is reached with one more dot: `--set train.lora.rank=8` enables it with
its defaults when it is unset, `--set train.lora=none` clears it. Values are read
as TOML values first; a string field takes the text as it is unless it is quoted. Unknown keys
are errors that suggest the closest valid key.

Reading and checking are msgspec's (`msgspec.convert` into the `Recipe` structs, its errors put in
the recipe's words by `config.recipe_error`); writing is tomli-w's, reading the standard
library's tomllib.
"""

import difflib
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import tomli_w

from ov_train.config import (
    Recipe,
    choices,
    recipe_error,
    section_type,
    suggest_key,
    typed_value,
)
from ov_train.errors import RecipeError

TOP_LEVEL = ("name", "stage", "description")
NONE_WORDS = ("none", "null")


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as nested plain values (tuples become lists), `None` kept."""
    return _plain(msgspec.to_builtins(recipe))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def recipe_from_dict(data: Mapping[str, Any], *, source: str = "recipe") -> Recipe:
    """Build and validate a Recipe from nested plain values; `source` prefixes errors.

    A `base` entry names a registered recipe whose values the others override.
    """
    try:
        return _build(_with_base(data))
    except RecipeError as error:
        raise RecipeError(f"{source}: {error}") from None


def _with_base(data: Mapping[str, Any]) -> dict[str, Any]:
    data = dict(data)
    base_name = data.pop("base", None)
    if base_name is None:
        return data
    from ov_train.recipes import RECIPES

    if base_name not in RECIPES:
        raise RecipeError(f"base {base_name!r} is not a registered recipe; see `ov-train recipes`")
    return _merge(recipe_to_dict(RECIPES[base_name]), data)


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            merged[key] = _merge(base[key], value)
        else:
            merged[key] = value
    return merged


def _build(data: dict[str, Any]) -> Recipe:
    try:
        return msgspec.convert(data, Recipe, strict=True)
    except msgspec.ValidationError as error:
        raise recipe_error(error, data, kind=Recipe) from None


# ---------------------------------------------------------------------------------- TOML files
def recipe_to_toml(recipe: Recipe) -> str:
    """The recipe as TOML text (optional values that are unset are left out)."""
    return tomli_w.dumps(_without_none(recipe_to_dict(recipe)))


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _without_none(v) if isinstance(v, dict) else v
        for k, v in values.items()
        if v is not None
    }


def save_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write the recipe as a TOML file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(recipe_to_toml(recipe), encoding="utf-8")
    return path


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a TOML recipe file; errors name the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise RecipeError(f"{path}: not valid TOML ({error})") from None
    return recipe_from_dict(data, source=str(path))


def resolve_recipe(name_or_path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """A registered recipe by name, or a TOML file by path, with `key=value` overrides."""
    from ov_train.recipes import RECIPES

    text = str(name_or_path)
    if text in RECIPES:
        recipe = RECIPES[text]
    elif Path(text).suffix == ".toml" or Path(text).is_file():
        recipe = load_recipe(text)
    else:
        close = difflib.get_close_matches(text, list(RECIPES), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise RecipeError(
            f"{text!r} is neither a registered recipe nor a TOML file{hint} "
            "(`ov-train recipes` lists the names)"
        )
    return apply_overrides(recipe, overrides)


# ---------------------------------------------------------------------------------- overrides
def apply_overrides(recipe: Recipe, overrides: Iterable[str]) -> Recipe:
    """A copy of `recipe` with each `section.key=value` (or top-level `key=value`) applied."""
    data = recipe_to_dict(recipe)
    for text in overrides:
        key, raw = _split_override(text)
        target, name, annotation = _locate(data, key)
        try:
            target[name] = parse_value(raw, annotation, key)
        except RecipeError as error:
            raise RecipeError(f"--set {text}: {error}") from None
    return recipe_from_dict(data, source="after --set")


def _split_override(text: str) -> tuple[str, str]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {text!r}: expected KEY=VALUE, e.g. optim.lr=2e-5")
    return key.strip(), raw.strip()


def _locate(data: dict[str, Any], key: str) -> tuple[dict[str, Any], str, Any]:
    parts = key.split(".")
    if len(parts) == 1:
        if parts[0] not in TOP_LEVEL:
            raise RecipeError(
                f"unknown key {key}{suggest_key(parts[0], [*TOP_LEVEL, *Recipe.SECTIONS], '')}"
            )
        return data, parts[0], _field_types(Recipe)[parts[0]]
    section, name = parts[0], ".".join(parts[1:])
    if section not in Recipe.SECTIONS:
        close = difflib.get_close_matches(section, list(Recipe.SECTIONS), n=1)
        if close and name in data[close[0]]:
            raise RecipeError(f"unknown key {key}; did you mean {close[0]}.{name}?")
        raise RecipeError(f"unknown key {key}{suggest_key(section, list(Recipe.SECTIONS), '')}")
    kind, target, prefix = Recipe.SECTIONS[section], data[section], f"{section}."
    for depth, name in enumerate(parts[1:], start=2):
        hints = _field_types(kind)
        if name not in hints:
            raise RecipeError(f"unknown key {key}{suggest_key(name, list(hints), prefix)}")
        if depth == len(parts):
            return target, name, hints[name]
        nested = section_type(hints[name])
        if nested is None:
            raise RecipeError(f"unknown key {key}: {prefix}{name} is not a table")
        if target[name] is None:  # `train.lora.rank=8` enables LoRA with its defaults
            target[name] = recipe_to_dict(nested())  # type: ignore[arg-type]
        kind, target, prefix = nested, target[name], f"{prefix}{name}."
    raise AssertionError("unreachable")


def _field_types(kind: type[msgspec.Struct]) -> dict[str, Any]:
    return {item.name: item.type for item in msgspec.structs.fields(kind)}


def parse_value(raw: str, annotation: Any, key: str) -> Any:
    """Text from the command line as the type `annotation` (see the module docstring)."""
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and (
        type(None) in args
    )
    if optional:
        if raw.lower() in NONE_WORDS:
            return None
        annotation = next(a for a in args if a is not type(None))
    if section_type(annotation) is not None:
        raise RecipeError(
            f"{key} is a table: set its keys ({key}.KEY=VALUE) or clear it with {key}=none"
        )
    if _is_text(annotation):
        return _toml_or_text(raw) if raw[:1] in ('"', "'") else raw
    value = _toml_or_text(raw)
    if typing.get_origin(annotation) is tuple and not isinstance(value, list | str):
        value = [value]  # one item: `--set optim.betas=0.9` is a list of one, reported as such
    if typing.get_origin(annotation) is tuple and isinstance(value, str):
        items = [item.strip() for item in raw.split(",") if item.strip()]
        kinds = typing.get_args(annotation)
        value = [
            item if _is_text(_item_type(kinds, index)) else _toml_or_text(item)
            for index, item in enumerate(items)
        ]
    return typed_value(value, annotation, key)


def _is_text(annotation: Any) -> bool:
    """A str field, a str with a constraint, or a choice of strings: the text is the value."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation is str or all(isinstance(c, str) for c in choices(annotation) or [0])


def _item_type(kinds: tuple[Any, ...], index: int) -> Any:
    if kinds[-1] is Ellipsis:
        return kinds[0]
    return kinds[min(index, len(kinds) - 1)]


def _toml_or_text(raw: str) -> Any:
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw
