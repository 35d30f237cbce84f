"""Reading a service's `/metrics` the way Prometheus does."""
from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


async def scrape(base_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of `GET /metrics` (no credentials), keyed by name and labels."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    """One sample's value; 0 when it is absent (a counter not yet incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
