"""What a run prints: alignloop's own log lines and one progress bar per long stage; the
libraries underneath stay quiet unless asked (`-v`).

Left alone, one quick run printed 124 lines of transformers "Loading weights" bars, a
FutureWarning on every LoRA train and accelerate INFO lines and a "Removed shared tensor"
warning on every checkpoint save. `quiet_libraries` is the one place that turns that down;
the command line calls it through `setup_logging`, and `Loop.run` calls it too, so the
Python API is as quiet as the command:

    verbosity   alignloop   libraries (transformers, accelerate, peft, hub, vLLM, ...)
    -1  (-q)    WARNING     ERROR; no library bars; known-harmless warnings hidden
     0          INFO        ERROR; no library bars; known-harmless warnings hidden
     1  (-v)    INFO        INFO; their bars; every warning
     2  (-vv)   DEBUG       DEBUG; their bars; every warning

Only the warnings listed in `HARMLESS_WARNINGS` are hidden, never warnings as a whole.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

# Loggers that are plain `logging` loggers, whatever the import order. transformers is
# not one of them (see quiet_libraries).
LIBRARY_LOGGERS = ("accelerate", "peft", "huggingface_hub", "datasets", "httpx", "openai")

# (category, message regex) of warnings that say nothing about the user's run.
HARMLESS_WARNINGS = (
    # peft reads `model.is_gradient_checkpointing` (deprecated in transformers 5) per LoRA model
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)


def setup_logging(verbosity: int = 0) -> None:
    """The command line's logging: alignloop at WARNING (-1), INFO (0, 1) or DEBUG (2),
    and `quiet_libraries(verbosity)`."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity < 2 else logging.DEBUG
    logging.basicConfig(level=level, format=LOG_FORMAT)
    quiet_libraries(verbosity)


def quiet_libraries(verbosity: int = 0) -> None:
    """Silence third-party logs, progress bars and `HARMLESS_WARNINGS` (verbosity <= 0), or
    let them through again at INFO (1) or DEBUG (2).

    transformers takes its log level (from TRANSFORMERS_VERBOSITY) and its bar switch (from
    huggingface_hub's) when first imported, so both are set that way for a later import,
    and through transformers' own functions if it is loaded already. Importing
    transformers here would cost `alignloop status` a second."""
    level = logging.ERROR if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    os.environ["TRANSFORMERS_VERBOSITY"] = logging.getLevelName(level).lower()
    # vLLM's engine processes read it when they start (`generation.vllm`): without it, a
    # run printed a dozen start-up WARNING lines (tcmalloc, chunked prefill, Triton) per engine
    os.environ["VLLM_LOGGING_LEVEL"] = logging.getLevelName(level)
    action = "ignore" if verbosity <= 0 else "default"
    for category, message in HARMLESS_WARNINGS:
        warnings.filterwarnings(action, message=message, category=category)

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
