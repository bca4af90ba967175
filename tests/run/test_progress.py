"""Progress without a terminal (igam.run.progress): plain lines now and then, no carriage
returns; the same object counts what is done, as tqdm's bar does."""

from __future__ import annotations

import sys

from igam.run.progress import LogProgress, progress


def test_log_file_gets_lines_not_carriage_returns(capsys):
    bar = progress(range(5), desc="attack", total=5, every=0.0)  # stderr is not a terminal
    assert isinstance(bar, LogProgress)
    assert list(bar) == [0, 1, 2, 3, 4] and bar.n == 5
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 7  # the start, one per item (every 0 s), the end
    assert lines[0].startswith("attack: 0/5 it (") and lines[1].startswith("attack: 1/5 it (")
    assert lines[-2].startswith("attack: 5/5 it (")
    assert lines[-1].startswith("attack: 5/5 it (")  # the closing line


def test_lines_at_most_every_interval_and_silent_when_hidden(capsys):
    list(progress(range(1000), desc="slow", total=1000, every=3600.0))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("slow: 0/1000 it (")  # the start
    assert lines[1].startswith("slow: 1000/1000 it (")  # and the end, nothing between
    bar = progress(range(3), desc="quiet", show=False)
    assert list(bar) == [0, 1, 2] and bar.n == 3
    assert capsys.readouterr().err == ""


def test_manual_updates_with_postfix(capsys):
    bar = LogProgress(total=4, desc="autoattack apgd-ce", every=0.0, unit="batch")
    bar.set_postfix_str("robust 7")
    bar.update(2)
    bar.close()
    bar.close()  # once
    assert capsys.readouterr().err.splitlines() == [
        "autoattack apgd-ce: 2/4 batch (0 s, robust 7)"] * 2  # the update's and the close's
    assert not sys.stderr.isatty()
