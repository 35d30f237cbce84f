"""The orchestrator harness of tests/orchestrator, for the security tests that drive a real one."""
from tests.orchestrator.conftest import harness, orchestrator_factory

__all__ = ["harness", "orchestrator_factory"]
