"""The orchestrator harness of tests/orchestrator: admin tokens, audit and web access are met
through a real orchestrator."""
from tests.orchestrator.conftest import harness, orchestrator_factory

__all__ = ["harness", "orchestrator_factory"]
