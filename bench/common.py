"""Shared helpers of the benchmark scripts (run by hand, never in CI).

- command-line options common to every script (:func:`add_common_args`), width presets;
- timing: :func:`interleave` runs several measured callables in turn (A, B, A, B, ...) so
  that background load hits all of them alike, and :func:`summarize` reduces to medians;
- peak memory: CUDA ``max_memory_allocated`` (in process) or, on CPU, the RSS high-water mark
  (``ru_maxrss``) of a fresh subprocess (:func:`peak_rss_in_subprocess`);
- environment record, plain-text tables and the JSON result files under ``bench/results/``.

Scripts run from the repository root as ``python -m bench.bench_pgd`` (or
``python bench/bench_pgd.py``); see bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # ``python bench/x.py`` puts bench/, not the repo, on the path
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from igam.models import DEBUG_WIDTHS, PAPER_WIDTHS  # noqa: E402
from igam.run.device import resolve_device, set_fidelity  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
WIDTH_PRESETS = {"debug": tuple(DEBUG_WIDTHS), "paper": tuple(PAPER_WIDTHS)}
MB = 1024.0 * 1024.0


# ----------------------------------------------------------------------------------------------
# Options


def parse_widths(text: str) -> tuple:
    """'debug' | 'paper' | 'a,b,c,d' -> a 4-tuple of ints (init conv, stage 1..3 channels)."""
    text = str(text).strip()
    if text in WIDTH_PRESETS:
        return WIDTH_PRESETS[text]
    try:
        widths = tuple(int(t) for t in text.replace(" ", "").split(","))
    except ValueError:
        widths = ()
    if len(widths) != 4 or min(widths) < 1:
        raise argparse.ArgumentTypeError(
            f"--width must be {' or '.join(WIDTH_PRESETS)} or 4 positive ints 'a,b,c,d', "
            f"got {text!r}")
    if widths[2] == widths[1] or widths[3] == widths[2]:
        # igam.models.ResidualUnit only down-samples the shortcut when the channels change
        raise argparse.ArgumentTypeError(
            f"--width {text}: stages 2 and 3 (stride 2) must change the channel count "
            "(e.g. 4,4,6,8)")
    return widths


def make_parser(prog: str, doc: str | None, *, image_args: bool = False,
                **common: Any) -> argparse.ArgumentParser:
    """The argument parser of a benchmark: its docstring as help, :func:`add_common_args`
    (``common`` are its defaults) and, with ``image_args``, --image_size / --num_classes of
    the benchmark's images."""
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, **common)
    if image_args:
        parser.add_argument("--image_size", type=int, default=32, help="image side (CIFAR: 32)")
        parser.add_argument("--num_classes", type=int, default=10)
    return parser


def add_common_args(parser: argparse.ArgumentParser, *, batch_size: int, reps: int,
                    units: int = 1, width: str = "debug", warmup: int = 1) -> None:
    """--device --width --units --batch_size --reps --warmup --threads --seed --out_dir."""
    parser.add_argument("--device", default="auto",
                        help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--width", type=parse_widths, default=parse_widths(width),
                        help="WideResNet widths: debug (16,16,32,64), paper (16,160,320,640) "
                             f"or 'a,b,c,d' (default: {width})")
    parser.add_argument("--units", type=int, default=units,
                        help=f"residual units per stage (paper: 5; default: {units})")
    parser.add_argument("--batch_size", type=int, default=batch_size,
                        help=f"batch size (default: {batch_size})")
    parser.add_argument("--reps", type=int, default=reps,
                        help=f"timed repetitions of each measured thing (default: {reps})")
    parser.add_argument("--warmup", type=int, default=warmup,
                        help=f"untimed runs of each thing first (default: {warmup})")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads on CPU (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out_dir", default=str(RESULTS_DIR),
                        help="folder of the JSON result (default: bench/results); '' skips it")
    parser.add_argument("--tag", default="",
                        help="suffix of the result file name, e.g. 'paper' -> pgd_cpu_paper.json")


def setup(args: argparse.Namespace) -> torch.device:
    """Device from --device, thread count, seed, and the port's fidelity setting (TF32 off)."""
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    set_fidelity(False)  # the port's default (original.md §1): measure what training actually runs
    return device


# ----------------------------------------------------------------------------------------------
# Timing


def sync(device: torch.device) -> None:
    """Wait for queued kernels (CUDA) so that wall-clock times are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one ``fn()`` call, synchronised on CUDA."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleave(fns: Mapping[str, Callable[[], object]], reps: int, warmup: int,
               device: torch.device) -> Dict[str, List[float]]:
    """Time every callable ``reps`` times, interleaved: A, B, C, then C, B, A, then A, B, C...

    ``warmup`` untimed rounds come first (first-call costs: allocator growth, oneDNN/cuDNN
    kernel selection, lazy module loading). Interleaving spreads background load (other
    processes on a shared machine) evenly over the contenders; the order is reversed every
    other round because the position in a round matters too (on this CPU the first PGD of a
    round ran ~4% slower than the same PGD second). Report medians.
    Returns {name: [seconds per rep]} in round order.
    """
    for _ in range(max(warmup, 0)):
        for fn in fns.values():
            fn()
    sync(device)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(max(reps, 1)):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(time_once(fns[name], device))
    return times


def summarize(samples: Sequence[float]) -> dict:
    """{median, min, max, mean, n} of a list of seconds."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "mean": statistics.fmean(samples), "n": len(samples)}


# ----------------------------------------------------------------------------------------------
# Memory


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc; -1 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError, IndexError):
        return -1.0


def max_rss_mb() -> float:
    """RSS high-water mark of this process in MiB (``ru_maxrss``: KiB on Linux, B on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / MB if sys.platform == "darwin" else value / 1024.0


def _status_kib(field: str) -> Optional[float]:
    """A 'kB' field of /proc/self/status (VmRSS, VmHWM) in KiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_rss_peak() -> bool:
    """Reset this process's RSS high-water mark (VmHWM) to its current RSS.

    Linux >= 4.0: writing 5 to /proc/self/clear_refs. Returns False where unsupported.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def malloc_trim() -> bool:
    """Ask glibc to return freed heap memory to the OS (``malloc_trim(0)``); False if n/a."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0) is not None)
    except (OSError, AttributeError):
        return False


def cuda_peak(fn: Callable[[], object], device: torch.device) -> dict:
    """Peak CUDA memory of one ``fn()`` call (after a warm-up call of the caller's choosing).

    ``base_mb``: allocated before (models, optimiser state, batch); ``peak_mb``:
    ``max_memory_allocated`` during the call (reset just before); ``delta_mb`` = peak - base.
    """
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"method": "cuda_max_memory_allocated", "base_mb": base / MB, "peak_mb": peak / MB,
            "delta_mb": (peak - base) / MB}


def rss_probe(fn: Callable[[], object], small_fn: Optional[Callable[[], object]] = None) -> dict:
    """Peak RSS of one ``fn()`` call in THIS (fresh) process; :func:`peak_rss_in_subprocess`
    runs it in a child.

    ``small_fn`` (the same work on a batch of 2) runs first: it loads the code pages of the
    kernels and allocates persistent state (optimiser momentum) without reaching the full
    batch's activation peak. Then the RSS high-water mark is reset to the current RSS
    (``base_mb``; Linux /proc/self/clear_refs), ``fn()`` runs, and ``peak_mb`` = VmHWM;
    ``delta_mb`` = peak - base is the extra memory the full-batch call needed at its peak.
    Before the reset, glibc's ``malloc_trim(0)`` returns freed heap memory to the system, so
    the base is the live memory, not what the allocator kept from the warm-up call (in a long
    run the allocator's retention makes RSS grow above this peak: ~1.5x for IGAM on CPU).
    Without clear_refs, ru_maxrss is used - then the delta is 0 whenever an earlier moment
    (e.g. ``import torch``) was higher, and ``method`` says so.
    """
    if small_fn is not None:
        small_fn()
    trimmed = malloc_trim()
    if reset_rss_peak():
        base = _status_kib("VmRSS") / 1024.0
        fn()
        peak = _status_kib("VmHWM") / 1024.0
        method = "subprocess_VmHWM_after_clear_refs" + ("+malloc_trim" if trimmed else "")
    else:
        base = max_rss_mb()
        fn()
        peak = max_rss_mb()
        method = "subprocess_ru_maxrss (lower bound)"
    return {"method": method, "base_mb": base, "peak_mb": peak, "delta_mb": peak - base}


def peak_rss_in_subprocess(module: str, probe: str, argv: Sequence[str],
                           timeout: float = 600.0) -> dict:
    """Run ``python -m <module> <argv> --_probe <probe>`` and return the JSON it prints last.

    The child builds the same models and batch, then reports :func:`rss_probe` of one call.
    A fresh process is needed because ``ru_maxrss`` only ever grows and freed CPU memory may
    stay in the allocator: in-process RSS deltas of later measurements would be wrong.
    """
    cmd = [sys.executable, "-m", module, *argv, "--_probe", probe]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"method": "subprocess_ru_maxrss", "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def argv_without_probe(argv: Iterable[str]) -> List[str]:
    """Copy of argv without --out_dir / --_probe (for children) plus --out_dir ''."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--_probe", "--out_dir", "--tag"):
            skip = True
            continue
        if a.startswith(("--_probe=", "--out_dir=", "--tag=")):
            continue
        out.append(a)
    return out + ["--out_dir", ""]


# ----------------------------------------------------------------------------------------------
# Environment, tables, results


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    """HEAD commit read from .git (no git command)."""
    try:
        head = (REPO / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = REPO / ".git" / head[5:]
            if ref.is_file():
                return ref.read_text().strip()
            packed = REPO / ".git" / "packed-refs"
            for line in packed.read_text().splitlines():
                if line.endswith(head[5:]):
                    return line.split()[0]
        return head
    except OSError:
        return "unknown"


def load_average() -> List[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def environment(device: torch.device) -> dict:
    """What the numbers were measured on."""
    env = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": load_average(),
        "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def describe_env(env: Mapping) -> str:
    dev = env.get("gpu") or f"CPU ({env['cpu_count']} cores, {env['torch_threads']} threads)"
    return (f"device {env['device']}: {dev}; torch {env['torch']}; "
            f"load average at start {env['load_average_start']}")


def format_table(rows: Sequence[Mapping], columns: Sequence[tuple]) -> str:
    """Plain-text table. ``columns``: (key, header, format spec or callable)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        line = []
        for key, _, fmt in columns:
            v = row.get(key)
            if v is None:
                line.append("-")
            elif callable(fmt):
                line.append(fmt(v))
            else:
                line.append(format(v, fmt) if fmt else str(v))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = []
    for i, r in enumerate(cells):
        out.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                             for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_result(out_dir: str, name: str, device: torch.device, payload: dict,
                 tag: str = "") -> Optional[Path]:
    """Write ``payload`` as ``<out_dir>/<name>_<cpu|cuda>[_<tag>].json`` (atomically) and say
    where; ``out_dir`` '' skips."""
    if not out_dir:
        return None
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_{device.type}{'_' + tag if tag else ''}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path


def _json_default(obj):
    if isinstance(obj, torch.device):
        return str(obj)
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if torch.is_tensor(obj):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def ms(seconds: float) -> str:
    return f"{1000.0 * seconds:.1f}"
