"""`ov-train recipes NAME`: a recipe as a complete TOML file to start from, every key in it.

`recipe_to_toml` leaves unset values out, since TOML has no null; a file to fill in should show
them. Here every unset value is a comment line in its table: `model.path` and `data.path` as
`# path = "MODEL_DIR"` / `# path = "PREPARED_DIR"` with what to put there, the others with what
unset means. The text loads back to the same recipe (comments are comments), so the choice is
safe: a file whose paths were not filled in trains nowhere, and `ov-train run` says
"model.path is required"; a placeholder uncommented but not replaced is a folder that "does not
exist". Uncommenting a line and giving it a value is all a user does, or they leave the file as
it is and pass `--set model.path=DIR --data DIR` to `ov-train run`.
"""

from typing import Any

from ov_train.config import Recipe
from ov_train.config_io import recipe_to_dict, recipe_to_toml

PLACEHOLDERS = {
    "model.path": (
        "MODEL_DIR",
        "fill in: `ov-model init --out` (Stage-1) or the previous stage's `ov-train export`",
    ),
    "data.path": ("PREPARED_DIR", "fill in: the folder `ov-train prepare --out` wrote"),
}
UNSET_MEANING = {
    "model.attention_backend": "ov_model chooses a varlen attention backend",
    "optim.lr_vision": "optim.lr",
    "optim.lr_projector": "optim.lr",
    "optim.lr_llm": "optim.lr",
    "train.lora": "no LoRA, the trainable modules train in full; a [train.lora] table enables it",
}


def recipe_template(recipe: Recipe) -> str:
    """The recipe as TOML with every key: set values as `recipe_to_toml` writes them, unset ones
    as comment lines in their table (see the module docstring)."""
    lines = recipe_to_toml(recipe).splitlines()
    for table, key in _unset_keys(recipe_to_dict(recipe)):
        end = _table_end(lines, table)
        lines.insert(end, _comment(f"{table}.{key}", key))
    header = [
        f"# Recipe {recipe.name}, every key: unset values are comments (TOML has no null).",
        "# Fill in model.path and data.path (uncomment them), or pass",
        "# `--set model.path=DIR --data DIR` to `ov-train run`.",
        "",
    ]
    return "\n".join(header + lines) + "\n"


def _unset_keys(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(table, key) of every None value in the recipe's tables, tables in file order."""
    found = []
    for name, value in data.items():
        if isinstance(value, dict):
            found += _unset_keys(value, f"{prefix}{name}.")
        elif value is None and prefix:
            found.append((prefix.rstrip("."), name))
    return found


def _table_end(lines: list[str], table: str) -> int:
    """Where the last line of `[table]`'s keys ends (before blank lines and the next table);
    the header is added at the end if the table had no set value."""
    if f"[{table}]" not in lines:
        lines += ["", f"[{table}]"]
    start = lines.index(f"[{table}]") + 1
    end = start
    for index in range(start, len(lines)):
        if lines[index].startswith("["):
            break
        if lines[index].strip():
            end = index + 1
    return end


def _comment(dotted: str, key: str) -> str:
    if dotted in PLACEHOLDERS:
        placeholder, meaning = PLACEHOLDERS[dotted]
        return f'# {key} = "{placeholder}"  # {meaning}'
    return f"# {key}: unset ({UNSET_MEANING.get(dotted, 'no value')})"
