"""Keep library chatter off the console, without hiding real warnings.

What is dropped, and why it is safe to drop:

- transformers' "`CLIPImageProcessor` requires torchvision (not installed); falling back to
  `CLIPImageProcessorPil`": torchvision cannot be installed beside a CPU torch from PyPI, and the
  PIL processor is the one the pipelines used before transformers 5 (a notice, not a problem);
- diffusers' "The following part of your input was truncated because CLIP can only handle ...",
  which prints the cut-off text (kilobytes for a long prompt) on every call: the runtime says it
  once in words instead and records what the model read (``generation.prompt_seen``);
- transformers' "Token indices sequence length is longer than the specified maximum", the same
  fact from the tokenizer;
- the "Loading pipeline components" / "Loading weights" progress bars while a model loads
  (:func:`loading_quietly`, around every ``loading.load``): the CLI shows its own per-image
  bar, and in the studio they only cluttered the server log (e.g. the demo seed at first start).

Every other message of both libraries still reaches the console.
"""
from __future__ import annotations

import contextlib
import logging
import threading

_DROPPED = (
    "requires torchvision (not installed)",
    "The following part of your input was truncated because",
    "Token indices sequence length is longer than the specified maximum",
)
_LIBRARIES = ("diffusers", "transformers")
_lock = threading.Lock()


class _DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not any(text in message for text in _DROPPED)


_FILTER = _DropKnownNoise()


def install() -> None:
    """Attach the filter to the diffusers and transformers loggers and their handlers (idempotent).

    A logger's own filters only see records logged on that logger, so the filter goes on the
    libraries' handlers (which every child logger's records reach) and on their root loggers.
    """
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.get_logger("diffusers")  # make sure each library has configured its handler
    transformers_logging.get_logger("transformers")
    with _lock:
        for name in _LIBRARIES:
            logger = logging.getLogger(name)
            for target in (logger, *logger.handlers):
                if _FILTER not in target.filters:
                    target.addFilter(_FILTER)


@contextlib.contextmanager
def loading_quietly():
    """No library progress bars while a model loads (restored afterwards)."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    install()
    states = []
    for lib in (diffusers_logging, transformers_logging):
        enabled = lib.is_progress_bar_enabled()
        states.append((lib, enabled))
        if enabled:
            lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, enabled in states:
            if enabled:
                lib.enable_progress_bar()
