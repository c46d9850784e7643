"""Checking a report.json object against `schema.json` (JSON Schema 2020-12)."""

from __future__ import annotations

import json

from alignloop.errors import AlignloopError


class ReportSchemaError(AlignloopError, ValueError):
    """A report.json that does not follow schema.json."""


def _schema() -> dict:
    from importlib.resources import files

    return json.loads((files("alignloop.report") / "schema.json").read_text())


def validate_report(obj: dict) -> None:
    """Raise ReportSchemaError naming each violation of schema.json (up to 10)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    # best_match descends into anyOf alternatives to the error that explains the most
    errors = [jsonschema.exceptions.best_match([e]) for e in validator.iter_errors(obj)]
    errors.sort(key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                 for e in errors[:10]]
        raise ReportSchemaError("report.json does not match the schema:\n  " + "\n  ".join(lines))
