"""Skip accounting: a one-line skip count after every run, and no silent skips in CI.

Loaded from pytest.ini (`-p tests.skip_guard`). After each run it prints

    skip guard: 3 skipped (1 allowed, 2 unexpected)

(pytest's `-rs`/`-ra` lists each skip with its reason). With `--strict-skips` (the Makefile passes it
when CI=true) a skip that the allow-list does not name fails the run: exit status 1 instead of
0 (all passed) or 5 (nothing ran because everything was skipped at collection). A run that already
failed keeps its own exit status.

The allow-list is the `skip_guard_allow` ini option, one `<node id glob> | <why it may skip>` per
line, e.g. `tests/test_x.py::test_gpu_* | needs a GPU, CI has none`. The glob is matched with
`fnmatch` against the node id of the skipped test (or of the module, for a skip at collection).
The reason is required: an allowed skip is a decision, and the file says who made it and why.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import pytest

INI_ALLOW = "skip_guard_allow"
OPTION = "--strict-skips"
SEPARATOR = "|"


@dataclass(frozen=True)
class Allowed:
    """One allow-list entry: a node id glob and why that skip is acceptable."""

    glob: str
    why: str

    def matches(self, nodeid: str) -> bool:
        return fnmatch.fnmatchcase(nodeid, self.glob)


@dataclass(frozen=True)
class Skip:
    """A skipped test (or module, when skipped at collection) and the reason pytest gave."""

    nodeid: str
    reason: str


def parse_allow_list(lines: list[str]) -> list[Allowed]:
    """`glob | why` lines -> entries; a line without a reason is a usage error."""
    entries = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        glob, sep, why = (part.strip() for part in line.partition(SEPARATOR))
        if not sep or not glob or not why:
            raise pytest.UsageError(f"{INI_ALLOW}: expected '<node id glob> {SEPARATOR} <why>', got {line!r}")
        entries.append(Allowed(glob, why))
    return entries


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The message of a skip report, without pytest's 'Skipped: ' prefix."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


@dataclass(eq=False)  # hashed by identity: pluggy keeps plugins in sets
class SkipGuard:
    """Collects skips during a run; decides and reports at the end."""

    allowed: list[Allowed]
    strict: bool
    skips: list[Skip] = field(default_factory=list)

    def record(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        """Keep real skips (an expected failure, xfail, is reported as skipped too: not one)."""
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skips.append(Skip(report.nodeid, skip_reason(report)))

    def unexpected(self) -> list[Skip]:
        return [s for s in self.skips if not any(a.matches(s.nodeid) for a in self.allowed)]

    def unused_entries(self) -> list[Allowed]:
        return [a for a in self.allowed if not any(a.matches(s.nodeid) for s in self.skips)]

    def fails_run(self) -> bool:
        return self.strict and bool(self.unexpected())

    def summary_line(self) -> str:
        n, bad = len(self.skips), len(self.unexpected())
        return f"skip guard: {n} skipped ({n - bad} allowed, {bad} unexpected)"

    # -- pytest hooks (this object is registered as a plugin) --------------------------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self.record(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Turn a clean (0) or empty (5) run with unexpected skips into a failed one (1)."""
        if self.fails_run() and session.exitstatus in (
            pytest.ExitCode.OK,
            pytest.ExitCode.NO_TESTS_COLLECTED,
        ):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        tr = terminalreporter
        tr.write_line(self.summary_line())
        if not self.strict:
            return
        for entry in self.unused_entries():
            tr.write_line(f"skip guard: allow-list entry matched no skip: {entry.glob}")
        unexpected = self.unexpected()
        for s in unexpected:
            tr.write_line(f"skip guard: UNEXPECTED SKIP {s.nodeid}: {s.reason}", red=True)
        if unexpected:
            tr.write_line(
                f"skip guard: {OPTION} (CI): the run fails on {len(unexpected)} unexpected skip(s); "
                f"install what the test needs, or allow it in pytest.ini `{INI_ALLOW}` with a reason",
                red=True,
                bold=True,
            )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        OPTION,
        action="store_true",
        default=False,
        help="fail the run on a skip that the skip_guard_allow list does not name (CI)",
    )
    parser.addini(
        INI_ALLOW,
        type="linelist",
        default=[],
        help="skips allowed under --strict-skips: '<node id glob> | <why>' per line",
    )


def pytest_configure(config: pytest.Config) -> None:
    guard = SkipGuard(parse_allow_list(config.getini(INI_ALLOW)), bool(config.getoption(OPTION)))
    config.pluginmanager.register(guard, "skip_guard_instance")
