"""The guard every command-line entry point runs under: bad input (an :class:`IGAMError`)
ends the program with a one-line ``error: ...`` and exit code 2, not a traceback; a SIGINT /
SIGTERM that stopped the work safely (``igam.run.stopping``) with one line saying how to go
on, and exit code 128 + the signal number."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Callable, Sequence

from igam.errors import IGAMError
from igam.run.stopping import Stopped, announce

__all__ = ["run_main"]


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def run_main(main: Callable[..., Any], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)`` as a command-line program; always ends by raising SystemExit.

    - normal return: exit code = the returned int, or 0 for None;
    - :class:`igam.errors.IGAMError`: prints ``error: <one-line message>`` to stderr, exit 2
      (set ``IGAM_TRACEBACK=1`` to also see the traceback);
    - :class:`igam.run.stopping.Stopped` (a SIGINT / SIGTERM stopped the work safely): prints
      one line - what was saved and the command that continues (training) or reruns it -
      to stderr, exit 128 + the signal number (130 SIGINT, 143 SIGTERM);
    - KeyboardInterrupt (e.g. a second Ctrl-C): prints ``interrupted`` to stderr, exit 130.

    Other exceptions are bugs and propagate with their traceback.
    """
    try:
        result = main(argv)
    except Stopped as stop:
        announce(stop, argv, main)
        raise SystemExit(stop.code) from None
    except IGAMError as exc:
        if os.environ.get("IGAM_TRACEBACK"):
            traceback.print_exc()
        message = _one_line(str(exc)) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    raise SystemExit(0 if result is None else int(result))
