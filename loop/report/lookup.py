"""Reading nested report.json (and state.json) objects without a chain of `.get(...) or {}`."""

from __future__ import annotations

from typing import Any


def get_path(obj: Any, *path: str) -> Any:
    """obj[path[0]][path[1]]..., or None as soon as a step is missing, null or not a dict.

        get_path(report, "kl_to_base", "k1", "sequence", "value")   # float | None
    """
    for key in path:
        if not isinstance(obj, dict) or obj.get(key) is None:
            return None
        obj = obj[key]
    return obj
