"""The security suite performs each attack against real processes; it shares the e2e suite's fixtures."""

from tests.e2e.conftest import ab, mesh, pytest_runtest_makereport  # noqa: F401 - fixtures and the log hook
