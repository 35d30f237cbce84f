from tests.orchestrator.conftest import harness, orchestrator_factory

__all__ = ["harness", "orchestrator_factory"]
