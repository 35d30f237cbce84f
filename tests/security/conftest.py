from tests.orchestrator.conftest import orchestrator_factory

__all__ = ["orchestrator_factory"]
