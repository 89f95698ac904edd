"""`nativewatch top` in a real terminal (tmux): it starts full-screen, shows the table, and quits on `q`.

Issue 4. tmux gives the program a real pty of a known size; capture-pane reads back what a user sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import build_c


def _tmux(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10)


def _wait(cond, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


@pytest.fixture
def tmux_session():
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (scripts/setup.sh installs it)")
    name = f"nwtop-{uuid.uuid4().hex[:8]}"
    yield name
    _tmux("kill-session", "-t", name)


def test_top_runs_full_screen_in_a_terminal_and_quits_on_q(tmux_session):
    hold = build_c("tui_hold.c", cflags=["-O1", "-pthread"])
    marker = f"m{uuid.uuid4().hex[:10]}"
    p = subprocess.Popen([str(hold), "32", "2", marker], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().startswith("READY")
        exe = Path(sys.executable).parent / "nativewatch"
        done = Path(f"/tmp/{tmux_session}.rc")
        # The exit status is written to a file so the test can tell "quit cleanly" from "crashed".
        cmd = f"{exe} top --interval 1; echo $? > {done}"
        r = _tmux("new-session", "-d", "-s", tmux_session, "-x", "160", "-y", "40",
                  "-e", f"PATH={os.environ.get('PATH', '')}", cmd)
        assert r.returncode == 0, r.stderr
        # A detached session on a fresh server can start at tmux's default 80x24: make it 160x40 (the
        # app gets SIGWINCH and relayouts, which this also exercises).
        _tmux("resize-window", "-t", tmux_session, "-x", "160", "-y", "40")

        def screen() -> str:
            return _tmux("capture-pane", "-p", "-t", tmux_session).stdout

        assert _wait(lambda: "PID" in screen() and "CATEGORIES" in screen(), 30), screen()
        assert _wait(lambda: "processes" in screen() and "scan" in screen(), 10), screen()
        # Find our process through the search box, as a user would.
        _tmux("send-keys", "-t", tmux_session, "/")
        _tmux("send-keys", "-t", tmux_session, "-l", marker)
        _tmux("send-keys", "-t", tmux_session, "Enter")
        assert _wait(lambda: f" {p.pid} " in screen() and "tui_hold" in screen(), 10), screen()
        text = screen()
        lines = text.splitlines()
        assert len(lines) == 40 and "q Quit" in lines[-1]  # full screen, footer on the last line
        _tmux("send-keys", "-t", tmux_session, "q")
        assert _wait(lambda: done.exists() and done.read_text().strip() != "", 10), screen()
        assert done.read_text().strip() == "0"
        done.unlink()
    finally:
        p.kill()
        p.wait()


def test_top_without_a_terminal_prints_the_table(nativewatch_cli):
    r = nativewatch_cli("top", "-n", "5")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["PID", "COMM", "RUNTIME", "RSS"]
    assert 1 <= len(lines) - 1 <= 5
