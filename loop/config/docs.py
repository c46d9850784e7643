"""Every config key with its documentation, read from the attribute docstrings of the schema
(`alignloop config --docs`)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing

from alignloop.config.schema import Config


def field_docs(cls: type = Config) -> dict[str, str]:
    """{dotted key: docstring} for every field, read from the attribute docstrings above."""
    out: dict[str, str] = {}

    def visit(c: type, prefix: str) -> None:
        tree = ast.parse(inspect.getsource(c))
        body = tree.body[0].body  # type: ignore[attr-defined]
        hints = typing.get_type_hints(c)
        for node, nxt in zip(body, body[1:] + [None], strict=True):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                name = node.target.id
                doc = ""
                if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                    doc = " ".join(str(nxt.value.value).split())
                out[prefix + name] = doc
                if dataclasses.is_dataclass(hints[name]):
                    visit(hints[name], f"{prefix}{name}.")
                args = typing.get_args(hints[name])
                if typing.get_origin(hints[name]) is tuple and args and dataclasses.is_dataclass(args[0]):
                    visit(args[0], f"{prefix}{name}[].")  # a list of sections, e.g. judges

    visit(cls, "")
    return out
