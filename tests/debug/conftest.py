from tests.orchestrator.conftest import harness, orchestrator_factory  # noqa: F401  (fixtures)
