from tests.orchestrator.conftest import orchestrator_factory  # noqa: F401  (fixture)
