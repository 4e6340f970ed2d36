"""What a test run selects and starts: ``extended`` tests left out unless asked for (extended_tests.py), and
the background pretraining's share of work among its children (toy_prefetch.py)."""

from __future__ import annotations

import pytest

from toy_prefetch import chains

pytest_plugins = ["pytester"]


def _collect(pytester: pytest.Pytester, *args: str) -> list[str]:
    """The node ids a pytest session (in this process: seconds faster) would run, with the repository's
    plugin wired up as conftest.py does."""
    pytester.makeconftest("""
        from extended_tests import add_option, deselect_extended, register_marker

        def pytest_addoption(parser):
            add_option(parser)

        def pytest_configure(config):
            register_marker(config)

        def pytest_collection_modifyitems(config, items):
            deselect_extended(config, items)
    """)
    test_x = """
        import pytest

        @pytest.mark.parametrize("case", [pytest.param("a", marks=pytest.mark.extended), "b"])
        def test_variants(case):
            pass

        @pytest.mark.extended
        def test_more():
            pass

        def test_plain():
            pass
    """
    pytester.makepyfile(test_x=test_x)
    # hypothesis's plugin off: its summary would import hypothesis anew in every in-process session (seconds)
    options = ["--co", "-q", "--strict-markers", "-p", "no:cacheprovider", "-p", "no:hypothesispytest"]
    result = pytester.runpytest_inprocess(*options, *args)
    assert result.ret == 0, result.stdout.str()
    return [line for line in result.stdout.lines if "::" in line]


def test_extended_tests_are_deselected_unless_asked_for(pytester):
    assert _collect(pytester) == ["test_x.py::test_variants[b]", "test_x.py::test_plain"]
    everything = ["test_x.py::test_variants[a]", "test_x.py::test_variants[b]", "test_x.py::test_more",
                  "test_x.py::test_plain"]  # fmt: skip
    assert _collect(pytester, "--extended") == everything
    # named by its node id, an extended test runs without the option
    assert _collect(pytester, "test_x.py::test_variants[a]") == ["test_x.py::test_variants[a]"]


def test_prefetch_puts_the_small_models_first_and_shares_them_out():
    small = [("advise-wc", {"hidden_size": 32}), ("advise-se", {"hidden_size": 64})]
    assert chains(["wc", "se"], small) == [
        [("advise-wc", {"hidden_size": 32}), ("wc", None)],
        [("advise-se", {"hidden_size": 64}), ("se", None)],
    ]
    assert chains(["wc"], small) == [[*small, ("wc", None)]]
    assert chains([], small) == [[small[0]], [small[1]]]
    assert chains(["wc", "se"], []) == [[("wc", None)], [("se", None)]] and chains([], []) == []
