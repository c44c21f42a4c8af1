"""How every console script ends: one exit code, decided once, after everything is written.

`run_console` runs a script's body and turns whatever ends it into the exit code:

- the body's own code (its verdict), once stdout is flushed;
- a broken stdout (closed pipe, `| head -n1`, a full disk, `/dev/full`): the verdict stands, one line on
  stderr says the output was cut short, never a traceback; the interpreter's own last flush cannot fail
  afterwards (stdout is pointed at /dev/null);
- SIGINT / SIGTERM: 130 / 143 and one line (SIGTERM arrives as `Terminated`, a `KeyboardInterrupt`, so every
  clean-up on the way out runs: staging folders, cache temporaries, worker subprocesses);
- a `SystemExit` nobody decided (e.g. `sys.exit(0)` called inside analytic or vendor code): never 0, one line.

Torch-free and import-light: `dsocr-analytic` uses it too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

EXIT_NO_VERDICT = 1  # a run that ends without a verdict fails closed: never 0
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal number


class Terminated(KeyboardInterrupt):
    """SIGTERM delivered as an exception (a `KeyboardInterrupt`, so `except Exception` never swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Verdict:
    """What a script has decided so far: the exit code once its result is known (set before it is printed)."""

    code: int | None = None

    def decide(self, code: int) -> int:
        """Record `code` as the verdict and return it."""
        self.code = code
        return code


def run_console(prog: str, body: Callable[[Verdict], int]) -> int:
    """`body(verdict)`'s exit code, whatever ends it (see the module docstring); `prog` prefixes the one line."""
    verdict = Verdict()
    with _sigterm_raises(), _guarded_streams() as (out, err):
        try:
            code = verdict.decide(body(verdict))
        except KeyboardInterrupt as exc:  # Terminated too
            code = _interrupted(prog, getattr(exc, "signum", signal.SIGINT), verdict)
        except SystemExit as exc:
            code = _from_system_exit(prog, exc, verdict)
        out.flush()  # what is still buffered must reach stdout now, or count as cut short
        if out.fault is not None and code not in SIGNAL_EXIT.values():
            code = _broken_stdout(prog, verdict, out.fault)
    for stream in (s for s in (out, err) if s.fault is not None):
        _discard(stream.inner)  # the interpreter's last flush must not fail (exit 120, "Exception ignored")
    return code


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None, verdict: Verdict) -> argparse.Namespace:
    """`parser.parse_args(argv)`; its own exits (--help 0, a usage error 2) are decided verdicts."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        verdict.decide(_code_of(exc))
        raise


def say(prog: str, line: str) -> None:
    """One line on stderr if it can be written (a `_GuardedStream` while a body runs), never a traceback."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{prog}: {line}\n")
        sys.stderr.flush()


def _interrupted(prog: str, signum: int, verdict: Verdict) -> int:
    done = "the reports already written stand" if verdict.code is not None else "no report was finished"
    say(prog, f"interrupted by {signal.Signals(signum).name}: stopped; {done}")
    return SIGNAL_EXIT.get(signum, 128 + int(signum))


def _from_system_exit(prog: str, exc: SystemExit, verdict: Verdict) -> int:
    if verdict.code is not None and _code_of(exc) == verdict.code:
        return verdict.code  # argparse's --help / usage error, or a script's own sys.exit(verdict)
    say(prog, f"error: the run ended without a verdict (SystemExit({exc.code!r}) raised inside): report a bug")
    return _code_of(exc) or EXIT_NO_VERDICT


def _broken_stdout(prog: str, verdict: Verdict, reason: BaseException) -> int:
    why = f"{type(reason).__name__}: {reason.strerror or reason}" if isinstance(reason, OSError) else "closed"
    if verdict.code is None:
        say(prog, f"error: stdout could not be written ({why}) before a result: write to a file or a working pipe")
        return 2
    say(prog, f"warning: stdout could not be written ({why}); output cut short, exit {verdict.code} stands")
    return verdict.code


class _GuardedStream:
    """A stand-in for sys.stdout / sys.stderr: the first write or flush that fails (closed pipe, full disk) is
    recorded in `fault`, and it and every later one are dropped, so the script runs on to its verdict."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fault: BaseException | None = None

    def write(self, text: str) -> int:
        if self.fault is None:
            try:
                return self.inner.write(text)
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed
                self.fault = exc
        return len(text)

    def flush(self) -> None:
        if self.fault is None:
            try:
                self.inner.flush()
            except (OSError, ValueError) as exc:
                self.fault = exc

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the real stream's
        return getattr(self.inner, name)


@contextlib.contextmanager
def _guarded_streams() -> Iterator[tuple[_GuardedStream, _GuardedStream]]:
    """sys.stdout and sys.stderr as `_GuardedStream`s while the body runs; the real ones restored afterwards."""
    real_out, real_err = sys.stdout, sys.stderr
    out, err = _GuardedStream(real_out), _GuardedStream(real_err)
    sys.stdout, sys.stderr = out, err
    try:
        yield out, err
    finally:
        sys.stdout, sys.stderr = real_out, real_err


def _discard(stream: Any) -> None:
    """Point `stream`'s descriptor at /dev/null so what is still buffered (and the interpreter's last flush) goes
    nowhere instead of failing; a stream without a descriptor (a test's capture) is left alone."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(fd, stream.fileno())
        finally:
            os.close(fd)
        stream.flush()


def _code_of(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Terminated` while the body runs (main thread only; restored afterwards)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
