"""Test-suite wide configuration: Hypothesis profiles.

Three profiles, chosen with the environment variable NUMGPT_HYPOTHESIS_PROFILE:

* ``dev`` (the default): few examples, so the whole suite runs in well under a
  minute while you work. Randomised: each run explores new examples.
* ``ci``: derandomised (the same examples on every run, so a red CI is
  reproducible and never flaky) with somewhat more examples; a failure prints
  the ``@reproduce_failure`` blob. Used automatically when the ``CI``
  environment variable is set and NUMGPT_HYPOTHESIS_PROFILE is not.
* ``thorough``: hundreds of examples per property, for a long run before a
  release or after touching a layer:
  ``NUMGPT_HYPOTHESIS_PROFILE=thorough pytest tests/layers``.

No profile has a deadline: a gradient check runs a few forward passes per
element, and its time varies with the drawn shape, not with a regression.
A test that sets ``max_examples`` itself in ``@settings`` overrides the profile.
"""

import os

from hypothesis import settings

# Each profile starts from Hypothesis' own defaults, not from whatever profile is
# loaded now (Hypothesis itself loads a "ci" profile when it detects CI).
_base = settings.get_profile("default")
settings.register_profile("dev", _base, max_examples=15, deadline=None)
settings.register_profile("ci", _base, max_examples=25, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("thorough", _base, max_examples=500, deadline=None)

_profile = os.environ.get("NUMGPT_HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
settings.load_profile(_profile)


# With NUMGPT_FORBID_SKIPS=1 (set by .ci/run) a skipped test fails instead: CI installs every
# optional dependency, so a skip there would only hide a test that should have run.
def pytest_runtest_makereport(item, call):
    if os.environ.get("NUMGPT_FORBID_SKIPS") != "1" or call.excinfo is None:
        return None
    import pytest

    if call.excinfo.errisinstance(pytest.skip.Exception):
        from _pytest.reports import TestReport

        report = TestReport.from_item_and_call(item, call)
        report.outcome = "failed"
        report.longrepr = f"skipped under NUMGPT_FORBID_SKIPS=1: {call.excinfo.value}"
        return report
    return None


# Subprocesses the tests start (`python -m numgpt ...`) import the numgpt of this checkout, the one
# under test, whether or not (and wherever) numgpt is installed.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join([_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
