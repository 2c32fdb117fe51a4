"""Run a command in a child process under a memory cap and a time-out, and say how it ended.

Hostile inputs are only ever opened in such a child: a crash (a signal), an allocation beyond
the cap or a hang stays in the child, and the test asserts on how the child ended and on its
peak resident memory. That peak is the one the child reports at exit (`report_peak_rss`, its
VmHWM after exec); a child that does not report gets `ru_maxrss` from `os.wait4`, an upper
bound that also counts the pages it shared with the forking test process before exec.
"""

from __future__ import annotations

import atexit
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20


@dataclass(frozen=True)
class Ended:
    returncode: int  # negative: killed by that signal (as subprocess reports it)
    stdout: str
    stderr: str
    peak_rss_mib: float  # the child's peak resident set (as it reported it, else ru_maxrss)
    seconds: float
    timed_out: bool

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode < 0 else None

    def __str__(self) -> str:
        return (f"returncode {self.returncode}, peak RSS {self.peak_rss_mib:.0f} MiB, {self.seconds:.1f} s, "
                f"timed out {self.timed_out}\nstdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-3000:]}")


def run_capped(args: list[str], *, address_space_mib: int = 3072, timeout_s: float = 120.0,
               env: dict[str, str] | None = None, cwd: str | Path | None = None) -> Ended:
    """Run `args` with RLIMIT_AS = `address_space_mib` and a wall-clock time-out (then SIGKILL).

    The child gets this repository on PYTHONPATH and one compute thread (a fixed virtual
    memory baseline: every extra thread reserves its own stack and allocator arenas).
    """
    limit = address_space_mib * MiB

    def cap() -> None:  # runs in the child, before exec
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    from conftest import child_env  # (this checkout first on PYTHONPATH)

    environment = child_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONFAULTHANDLER="1", **(env or {}))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=environment,
                                cwd=cwd, preexec_fn=cap)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout_s:
                timed_out = True
                os.kill(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        reported = re.findall(rf"^{_PEAK} ([0-9.]+)$", stderr, re.MULTILINE)
        peak = float(reported[-1]) if reported else usage.ru_maxrss / 1024
        return Ended(proc.returncode, stdout, stderr, peak, seconds, timed_out)


_PEAK = "capped: peak RSS MiB"


def report_peak_rss() -> None:
    """In a child: print its own peak resident memory (VmHWM) to stderr when it exits, for
    `run_capped` to read."""
    def report() -> None:
        with open("/proc/self/status") as fh:
            kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
        print(f"{_PEAK} {kib / 1024:.1f}", file=sys.stderr, flush=True)

    atexit.register(report)
