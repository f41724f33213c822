"""How the command-line entry points report a failure: one paragraph, no traceback.

``train.py``, ``evaluate.py`` and ``python -m bnnrobust`` run their ``main`` through
:func:`run_entry_point`. An exception ends the program with exit code 2 and one paragraph on
stderr: the message of the innermost cause (for a config value rejected while the classes
are built, the class's own message that names the value, not jsonargparse's wrapper), and a
hint that ``--debug`` (or ``BNNROBUST_DEBUG=1``) shows the traceback. Called from Python,
the same ``main`` functions raise normally.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

__all__ = ["DEBUG_ENV", "fail", "one_paragraph", "root_cause", "run_entry_point"]

#: environment variable that keeps the traceback (as the ``--debug`` flag does)
DEBUG_ENV = "BNNROBUST_DEBUG"


def fail(message: str) -> NoReturn:
    """Print ``message`` (one paragraph, starting with ``error:``) to stderr and exit with 2."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of ``err``'s ``__cause__``/``__context__`` chain."""
    seen = {id(err)}
    while True:
        nxt = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if nxt is None or id(nxt) in seen:
            return err
        seen.add(id(nxt))
        err = nxt


def one_paragraph(err: BaseException) -> str:
    """``error: <message>`` of the root cause, whitespace folded to one paragraph."""
    cause = root_cause(err)
    text = " ".join(str(cause).split()) or type(cause).__name__
    if not isinstance(cause, ValueError | TypeError | FileNotFoundError | PermissionError) \
            and type(cause).__name__ not in text:
        text = f"{type(cause).__name__}: {text}"
    return "error: " + text


def run_entry_point(main: Callable[..., Any], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)``; on an exception print :func:`one_paragraph` and exit with code 2.

    ``--debug`` (removed from ``argv``) or ``BNNROBUST_DEBUG=1`` re-raises instead, with the
    full traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    if not debug:
        from bnnrobust.noise import silence_library_noise

        silence_library_noise()
    try:
        if argv is None:  # the parsers read sys.argv themselves (LightningCLI warns otherwise)
            sys.argv[1:] = args
            main()
        else:
            main(args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:
        if debug:
            raise
        message = one_paragraph(err) + " (run again with --debug for the traceback)"
        print(textwrap.fill(message, width=100, break_long_words=False, break_on_hyphens=False),
              file=sys.stderr)
        raise SystemExit(2) from None
