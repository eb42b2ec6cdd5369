"""tests/skip_guard.py: the skip count line, and --strict-skips failing a run on an unexpected skip.

Each test runs a small pytest session of its own (pytester, in process) with the plugin loaded.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

PLUGIN = ("-p", "tests.skip_guard")

MIXED = {
    "test_mixed": """
        import pytest

        def test_passes():
            assert True

        @pytest.mark.skipif(True, reason="no widget here")
        def test_marked():
            pass

        def test_skips_in_body():
            pytest.skip("backend missing")

        @pytest.fixture
        def needs_thing():
            pytest.skip("thing not installed")

        def test_fixture_skips(needs_thing):
            pass

        @pytest.mark.xfail(reason="known bug")
        def test_expected_failure():
            assert False
    """,
    "test_module_skip": """
        import pytest
        pytest.importorskip("no_such_module_for_skip_guard")

        def test_never_collected():
            pass
    """,
}


def run(pytester: pytest.Pytester, *args: str, ini: str | None = None) -> pytest.RunResult:
    if ini is not None:
        pytester.makeini(ini)
    return pytester.runpytest(*PLUGIN, "-rs", *args)


def test_counts_skips_and_passes_without_strict(pytester):
    pytester.makepyfile(**MIXED)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.OK
    # three skipped tests and one skipped module; the xfail is not a skip
    result.stdout.fnmatch_lines(["skip guard: 4 skipped (0 allowed, 4 unexpected)"])
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    assert "UNEXPECTED SKIP" not in result.stdout.str()


def test_strict_fails_on_unexpected_skips_and_names_them(pytester):
    pytester.makepyfile(**MIXED)
    result = run(pytester, "--strict-skips")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines_random(
        [
            "skip guard: 4 skipped (0 allowed, 4 unexpected)",
            "skip guard: UNEXPECTED SKIP test_mixed.py::test_marked: no widget here",
            "skip guard: UNEXPECTED SKIP test_mixed.py::test_skips_in_body: backend missing",
            "skip guard: UNEXPECTED SKIP test_mixed.py::test_fixture_skips: thing not installed",
            "skip guard: UNEXPECTED SKIP test_module_skip.py: *no_such_module_for_skip_guard*",
            "skip guard: --strict-skips (CI): the run fails on 4 unexpected skip(s)*",
        ]
    )


def test_strict_passes_when_every_skip_is_allowed(pytester):
    pytester.makepyfile(**MIXED)
    ini = """
        [pytest]
        skip_guard_allow =
            test_mixed.py::test_* | these need hardware CI lacks
            test_module_skip.py | optional module
            test_gone.py::* | an entry that no longer matches anything
    """
    result = run(pytester, "--strict-skips", ini=ini)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines_random(
        [
            "skip guard: 4 skipped (4 allowed, 0 unexpected)",
            "skip guard: allow-list entry matched no skip: test_gone.py::*",
        ]
    )
    assert "UNEXPECTED SKIP" not in result.stdout.str()


def test_strict_fails_on_the_skips_the_allow_list_does_not_name(pytester):
    pytester.makepyfile(**MIXED)
    ini = """
        [pytest]
        skip_guard_allow =
            test_mixed.py::test_marked | no widget in CI
    """
    result = run(pytester, "--strict-skips", ini=ini)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["skip guard: 4 skipped (1 allowed, 3 unexpected)"])
    assert "UNEXPECTED SKIP test_mixed.py::test_marked" not in result.stdout.str()


def test_everything_skipped_at_collection_is_a_failure_not_exit_5(pytester):
    pytester.makepyfile(test_module_skip=MIXED["test_module_skip"])
    assert run(pytester).ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result = run(pytester, "--strict-skips")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["skip guard: 1 skipped (0 allowed, 1 unexpected)"])


def test_no_tests_and_no_skips_keeps_exit_5(pytester):
    pytester.makepyfile(test_empty="# nothing to collect\n")
    result = run(pytester, "--strict-skips")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(["skip guard: 0 skipped (0 allowed, 0 unexpected)"])


def test_a_run_that_already_failed_keeps_its_exit_status(pytester):
    pytester.makepyfile(
        test_bad="import pytest\n\ndef test_skip():\n    pytest.skip('x')\n\n"
        "def test_fail():\n    assert 0\n",
        test_broken="this is not python\n",
    )
    result = run(pytester, "--strict-skips")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # collection error: nothing ran
    result = run(pytester, "--strict-skips", "test_bad.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["skip guard: UNEXPECTED SKIP test_bad.py::test_skip: x"])


def test_an_allow_list_entry_without_a_reason_is_a_usage_error(pytester):
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = run(pytester, ini="[pytest]\nskip_guard_allow =\n    test_one.py::test_one\n")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*skip_guard_allow: expected '<node id glob> | <why>'*"])
