"""Stopping safely on SIGINT and SIGTERM (Ctrl-C, and how cluster schedulers preempt a job).

Training (:class:`StopRequest`, used by ``igam.run.engine.fit``): the first SIGINT or SIGTERM
only sets a flag; the loop finishes the current step, writes the checkpoint of the step reached
(atomically, like the periodic ones) and raises :class:`Stopped`. The entry point's guard
(``igam.run.cli.run_main``) then prints one line on stderr,

    stopped by SIGTERM after step 57 of 200; checkpoint saved in models/x/checkpoint.pt;
    continue with: python train_igam.py --config ... --resume

(one line; the command is the process's own with ``--resume`` added where missing, see
:func:`continue_args`) and exits with 128 + the signal number (130 SIGINT, 143 SIGTERM). The
continued run ends bit-identical to an uninterrupted one (the checkpoint holds RNG states and
the sampler position, as every checkpoint). The first signal puts back the handlers that were
there before, so a second signal acts at once (SIGINT: KeyboardInterrupt; SIGTERM: the default
action ends the process); a checkpoint being written then is left as it was (atomic writes).

Evaluation (:func:`abort_on_signal`, around the attack and evaluation loops): the first signal
stops at once; nothing is written; the line says how far the work got and the command that
reruns it.

Handlers are installed only inside these blocks, only in the main thread, never for a signal
that is ignored on entry (e.g. SIGINT of a background job), and the previous handlers are put
back on leaving: importing this module, or a test running a loop in-process, changes nothing
outside them. Under torchrun (``igam.run.distributed``) every rank gets the signal from the
launcher; the ranks agree on it once per step (one tiny CPU all-reduce), stop after the same
step, and only rank 0 writes and prints.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from igam.run.config import split_options

__all__ = ["SIGNALS", "Stopped", "StopRequest", "abort_on_signal", "announce",
           "command_line", "continue_args", "signal_name"]

SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None))
                if s is not None)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Stopped(SystemExit):
    """The program stops because of signal ``signum``: exit code 128 + ``signum``.

    ``what`` says how far the work got and what was saved (``after step 57 of 200; checkpoint
    saved in ...``); ``resume``: the run continues with ``--resume`` (training), else the same
    command reruns it (evaluation). Uncaught, it ends the program with its code like any
    SystemExit; :func:`announce` prints the one line."""

    def __init__(self, signum: int, what: str, resume: bool):
        super().__init__(128 + int(signum))
        self.signum, self.what, self.resume = int(signum), what, resume


def _notice(text: str) -> None:
    """Write a line to stderr from a signal handler: straight to the file descriptor, since
    the handler may run while the main code is inside a write to sys.stderr (tqdm)."""
    with contextlib.suppress(OSError):
        os.write(2, f"\n{text}\n".encode())


class _Handlers:
    """Install a handler for SIGINT and SIGTERM in ``__enter__``, put the previous ones back
    on :meth:`restore` (at the first signal and on leaving)."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def install(self, handler: Callable[[int, Any], None]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal.signal works only there; other threads keep the defaults
        for sig in SIGNALS:
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:
                continue  # ignored on entry (nohup, background job): stays ignored
            self._previous[sig] = signal.SIG_DFL if previous is None else previous
            signal.signal(sig, handler)

    def restore(self) -> None:
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopRequest:
    """Context manager of the training loop: remembers the first SIGINT / SIGTERM.

    ``signum`` is 0 until a signal arrived, then its number; the loop checks it after every
    step. The first signal restores the previous handlers (a second one acts at once) and,
    with ``announce``, writes one line to stderr. On leaving, the previous handlers are back;
    a signal that arrived after the loop's last check and was not :meth:`consume`-d is
    delivered again to them (so it is not lost: SIGTERM still ends the process).
    """

    def __init__(self, announce: bool = True):
        self.announce = announce
        self.signum = 0
        self._consumed = False
        self._handlers = _Handlers()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            return
        self.signum = signum
        self._handlers.restore()
        if self.announce:
            name = signal_name(signum)
            _notice(f"{name} received: stopping after the current step and saving a "
                    f"checkpoint ({name} again stops at once)")

    def consume(self) -> int:
        """Mark the request as handled (the loop stopped); returns ``signum``."""
        self._consumed = True
        return self.signum

    def __enter__(self) -> StopRequest:
        self._handlers.install(self._handle)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._handlers.restore()
        if self.signum and not self._consumed and exc_type is None:
            signal.raise_signal(self.signum)
        return False


class _Abort(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def abort_on_signal(describe: Callable[[], str]) -> Iterator[None]:
    """For evaluation loops: the first SIGINT / SIGTERM inside the block stops it at once with
    ``Stopped(signum, describe(), resume=False)``. ``describe()`` says how far the work got and
    what was (not) written, e.g. ``after 1200 of 10000 examples (pgd); nothing was written``.
    A second signal meets the previous handlers. Handlers are restored on leaving."""
    handlers = _Handlers()

    def handle(signum: int, frame: Any) -> None:
        handlers.restore()
        raise _Abort(signum)

    handlers.install(handle)
    try:
        yield
    except _Abort as stop:
        raise Stopped(stop.signum, describe(), resume=False) from None
    finally:
        handlers.restore()


# --- the command that continues or reruns the program ----------------------------------------


def _items(args: Sequence[str]) -> list[tuple[list[str], str | None, str | None]]:
    """The command-line arguments grouped as ``igam.run.config`` reads them
    (:func:`igam.run.config.split_options`), with '-' in keys as '_'."""
    return [(tokens, None if key is None else key.replace("-", "_"), raw)
            for tokens, key, raw in split_options(args)]


def _truth(raw: str) -> bool | None:
    import yaml

    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return None
    return value if isinstance(value, bool) else None


def _sets(item, name: str) -> bool | None:
    """The value an argument item gives the bool key ``name`` (None: another key)."""
    _, key, raw = item
    if key == name:
        return True if raw is None else _truth(raw)
    if key == f"no_{name}" and raw is None:
        return False
    return None


def _file_value(files: Sequence[str], name: str) -> Any:
    """The value of top-level key ``name`` in the last of the config files that sets it."""
    import yaml

    value = None
    for file in files:
        try:
            data = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and name in data:
            value = data[name]
    return value


def continue_args(args: Sequence[str]) -> list[str]:
    """The arguments that continue a run started with ``args``: the same ones, with
    ``--resume`` appended unless they already resume, and ``--overwrite`` (which would
    contradict it) dropped - or ``--no-overwrite`` appended when a ``--config`` file sets
    ``overwrite: true``. Config files are read as they are now (relative to the current
    folder, as the run read them)."""
    items = _items(args)
    files = [raw for _, key, raw in items if key == "config" and raw]
    kept = [it for it in items if _sets(it, "overwrite") is not True]
    values = {}
    for name in ("resume", "overwrite"):
        given = [v for v in (_sets(it, name) for it in kept) if v is not None]
        values[name] = given[-1] if given else _file_value(files, name) is True
    out = [tok for it in kept for tok in it[0]]
    if not values["resume"]:
        out = [tok for it in kept if _sets(it, "resume") is None for tok in it[0]]
        out.append("--resume")
    if values["overwrite"]:
        out.append("--no-overwrite")
    return out


def _python() -> str:
    """How to call this interpreter: ``python`` / ``python3`` when that is what PATH finds,
    else its full path."""
    for name in ("python", "python3"):
        found = shutil.which(name)
        if found and os.path.abspath(found) == os.path.abspath(sys.executable):
            return name
    return sys.executable


def _launch_prefix(script: str | None) -> list[str]:
    """The command that started this process, without its arguments (``sys.argv[1:]``):
    ``torchrun --nproc_per_node N script`` under torchrun, else the interpreter (with its
    options, as typed, where Python records them) and the script."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    script = script or sys.argv[0]
    if world > 1:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world) or world)
        nodes = ["--nnodes", str(world // local)] if world != local else []
        return ["torchrun", *nodes, "--nproc_per_node", str(local), script]
    orig = list(getattr(sys, "orig_argv", []))
    args = sys.argv[1:]
    if orig and len(orig) > len(args) and orig[len(orig) - len(args):] == args:
        return orig[:len(orig) - len(args)]
    return [_python(), script]


def _script_of(main: Callable[..., Any] | None) -> str | None:
    """The file defining ``main`` (relative to the current folder when inside it)."""
    if main is None:
        return None
    try:
        file = inspect.getsourcefile(inspect.unwrap(main))
    except TypeError:
        return None
    if not file:
        return None
    with contextlib.suppress(ValueError):  # another drive (Windows)
        relative = os.path.relpath(file)
        if not relative.startswith(".."):
            return relative
    return file


def command_line(argv: Sequence[str] | None, resume: bool,
                 main: Callable[..., Any] | None = None) -> str:
    """The shell command (quoted) that continues (``resume``: :func:`continue_args`) or reruns
    this program, to be run from the same folder. ``argv`` None: the process's own command line
    (``sys.argv``); given (an in-process call of ``run_main(main, argv)``): the file of
    ``main`` run by this interpreter with those arguments."""
    if argv is None:
        prefix, args = _launch_prefix(None), sys.argv[1:]
    else:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        script = _script_of(main) or sys.argv[0]
        prefix = _launch_prefix(script) if world > 1 else [_python(), script]
        args = list(argv)
    return shlex.join([*prefix, *(continue_args(args) if resume else args)])


def announce(stop: Stopped, argv: Sequence[str] | None,
             main: Callable[..., Any] | None = None) -> None:
    """Print the one line on stderr: what stopped, what was saved, the command that goes on."""
    verb = "continue" if stop.resume else "rerun"
    print(f"stopped by {signal_name(stop.signum)} {stop.what}; {verb} with: "
          f"{command_line(argv, stop.resume, main)}", file=sys.stderr, flush=True)
