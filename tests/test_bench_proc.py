"""The `proc` benchmark's start-up case: it measures in a fresh
interpreter (alone, then with a second thread) and in the bench process,
and yields one row for each, the first two with their target.  Behaviour only: nothing here looks at a speed."""
import pytest

from conftest import require_piston


@pytest.fixture(scope="module")
def proc():
    require_piston()
    from piston._cli import _benchmarks
    _benchmarks()  # piston.benchmarks, installed or from the checkout
    from piston.benchmarks import proc
    return proc


# The test runner has threads of its own: the stdlib's fork start says so.
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*:DeprecationWarning")
def test_startup_rows_from_a_fresh_interpreter_and_from_here(proc):
    from piston.benchmarks._harness import Harness
    h = Harness(quick=True)
    h._say = lambda what: None
    fresh, threaded, here = proc.startup(h)
    makers = {"piston", "piston(fork)", "stdlib(fork)", "stdlib(forkserver)",
              "stdlib(spawn)"}
    for row in (fresh, threaded, here):
        assert set(row.values) == makers
        assert all(len(v) == 5 and min(v) > 0 for v in row.samples.values())
        assert row.baseline.startswith("stdlib(") and row.ratio > 0
    assert "fresh interpreter" in fresh.case and fresh.target == 1
    assert "second thread" in threaded.case and threaded.target == 1
    assert "MiB process" in here.case and here.target is None
