"""The orchestrator harness of tests/orchestrator, for the end-to-end masking test."""
from tests.orchestrator.conftest import orchestrator_factory

__all__ = ["orchestrator_factory"]
