"""The config reference, docs/config.md, generated from the schema (regx/config.py): every key, its type,
default and allowed values (the field metadata `validate` checks), the comment beside it, and each
group's options with the first line of their YAML. `make docs` writes it; a test fails when it is stale.

    python -m regx.reference > docs/config.md
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import tokenize
import typing
from pathlib import Path

from omegaconf import MISSING

from regx import config

HEADER = """# Config reference

Generated from `regx/config.py` by `make docs` (`python -m regx.reference > docs/config.md`); do not edit
by hand. Every default has one home, the schema; a group option (`conf/<group>/<option>.yaml`) only sets
values. A key the schema does not have is refused (`regx train lrr=0.1`: unknown config key 'lrr'), and
so is a value outside the allowed range, before any run directory is made.
"""


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class's source: the comment on its line, after the comment lines
    right above it."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    comments = {
        t.start[0]: t.string.lstrip("#").strip()
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type == tokenize.COMMENT
    }
    out = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above, line = [], node.lineno - 1
            while line >= 1 and line in comments and lines[line - 1].lstrip().startswith("#"):
                above.insert(0, comments[line])
                line -= 1
            out[node.target.id] = " ".join([*above, *([comments[node.lineno]] if node.lineno in comments else [])])
    return out


def _type(cls: type, f: dataclasses.Field) -> str:
    hint = typing.get_type_hints(cls)[f.name]
    text = str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.replace(" | None", " or null").replace("|", "or")


def _default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if value is MISSING or value is dataclasses.MISSING:
        return "(the option's)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`" if value != "" else "''"


def _allowed(f: dataclasses.Field) -> str:
    meta = f.metadata
    if "pattern" in meta:
        return meta["shown"]
    if "interval" in meta:
        return " ".join(filter(None, [meta["interval"], meta["note"]]))
    return ""


def rows(cls: type, prefix: str = "") -> list[list[str]]:
    """One row per key of `cls` (nested schemas flattened to dotted keys, in schema order)."""
    out, comments = [], field_comments(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out.extend(rows(hint, f"{prefix}{f.name}."))
            continue
        out.append(
            [
                f"`{prefix}{f.name}`",
                _type(cls, f),
                _default(f),
                _allowed(f).replace("|", "or"),
                comments.get(f.name, ""),
            ]
        )
    return out


def table(cls: type, prefix: str = "") -> str:
    lines = ["| key | type | default | allowed | what it does |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("\n", " ") for cell in row) + " |" for row in rows(cls, prefix)]
    return "\n".join(lines)


def options(group: str) -> str:
    """Each option of a group with the first line of its YAML's comment."""
    items = []
    for name in config.group_options(group):
        said = []
        for line in (config.conf_dir() / group / f"{name}.yaml").read_text().splitlines():
            if not line.startswith("#"):
                break
            if "@package" not in line:
                said.append(line.lstrip("# ").strip())
        text = " ".join(said)
        first = text[: text.index(". ") + 1] if ". " in text else text  # its first sentence
        items.append(f"- `{group}={name}`" + (f": {first}" if first else ""))
    return "\n".join(items)


def render() -> str:
    top = [f for f in dataclasses.fields(config.TrainConfig)]
    hints = typing.get_type_hints(config.TrainConfig)
    plain = [f.name for f in top if not dataclasses.is_dataclass(hints[f.name])]
    parts = [HEADER, "## Top-level keys\n", _plain_table(plain), ""]
    for f in top:
        schema = hints[f.name]
        if not dataclasses.is_dataclass(schema):
            continue
        group = f.name in config.GROUPS and (config.conf_dir() / f.name).is_dir()
        doc = inspect.getdoc(schema) or ""
        doc = "" if doc.startswith(f"{schema.__name__}(") else doc  # dataclasses' own generated text
        parts += [f"## `{f.name}`" + (" (a group)" if group else ""), ""]
        if doc:
            parts += [" ".join(doc.split()), ""]
        if group:
            parts += [options(f.name), ""]
        parts += [table(schema, f"{f.name}."), ""]
    extra = [
        g
        for g in config.GROUPS
        if not hasattr(config.TrainConfig, g) and (config.conf_dir() / g).is_dir() and g not in {f.name for f in top}
    ]
    for g in extra:
        parts += [f"## `{g}` (a group of presets)", "", options(g), ""]
    return "\n".join(parts).rstrip() + "\n"


def _plain_table(names: list[str]) -> str:
    full = table(config.TrainConfig).splitlines()
    keep = {f"`{n}`" for n in names}
    return "\n".join(full[:2] + [line for line in full[2:] if line.split(" | ")[0].lstrip("| ") in keep])


def written() -> Path:
    """Where the reference lives in a checkout."""
    return config.conf_dir().parent / "docs" / "config.md"


if __name__ == "__main__":
    print(render(), end="")
