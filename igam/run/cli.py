"""The guard every command-line entry point runs under: bad input (an :class:`IGAMError`)
ends the program with a one-line ``error: ...`` and exit code 2, not a traceback."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Callable, Sequence

from igam.errors import IGAMError

__all__ = ["run_main"]


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def run_main(main: Callable[..., Any], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)`` as a command-line program; always ends by raising SystemExit.

    - normal return: exit code = the returned int, or 0 for None;
    - :class:`igam.errors.IGAMError`: prints ``error: <one-line message>`` to stderr, exit 2
      (set ``IGAM_TRACEBACK=1`` to also see the traceback);
    - KeyboardInterrupt: prints ``interrupted`` to stderr, exit 130.

    Other exceptions are bugs and propagate with their traceback.
    """
    try:
        result = main(argv)
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
