"""Read a /metrics endpoint the way Prometheus does, for tests that check what a dashboard would see."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

PROMETHEUS_ACCEPT = "text/plain;version=0.0.4"


async def scrape(url: str) -> dict[str, float]:
    """The samples at `url` (asked for in Prometheus' text format), keyed `name{label="value",...}` with the
    labels sorted, or `name` without labels. Errors: aiohttp.ClientError; ValueError for a malformed answer."""
    async with aiohttp.ClientSession() as session, session.get(url, headers={"Accept": PROMETHEUS_ACCEPT}) as answer:
        answer.raise_for_status()
        text = await answer.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
