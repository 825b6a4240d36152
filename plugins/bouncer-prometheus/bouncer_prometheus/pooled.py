"""The metrics only the hooks see (the wait-time histogram, the login failures), for the
whole pooler.

Each worker observes its own clients, in a registry of its own that nothing serves.  The
console command ``SHOW PROMETHEUS_SAMPLES`` lists that registry's samples; it runs in every
worker (``on_every_worker``) and its answer adds the workers' samples up, series by series.
At each scrape the collector below reads that answer through ``context.show`` and rebuilds the
metric families from it, so /metrics counts every worker's clients whichever worker holds the
port (as the SHOW-based metrics do).  Bucket counts, sums, counts and counters add up across
processes; the ``_created`` series (when a process started counting) would not, so they are
left out.  With one process the command simply lists that process's samples.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from bouncer.admin.commands import Result, columns, on_every_worker, show, stats_allowed
from bouncer.admin.merge import keyed, total
from bouncer.plugin import Refusal

if TYPE_CHECKING:  # pragma: no cover
    from bouncer.plugin.context import PluginContext

COMMAND = "PROMETHEUS_SAMPLES"
SAMPLE_COLUMNS = columns("sssN", "family", "sample", "labels", "value")


def sample_rows(registry: Optional[CollectorRegistry]) -> List[List[Any]]:
    """One row per sample of *registry* (none without one): family, sample name, labels as
    JSON, value."""
    if registry is None:
        return []
    return [[family.name, sample.name, json.dumps(sample.labels, sort_keys=True), sample.value]
            for family in registry.collect() for sample in family.samples
            if not sample.name.endswith("_created")]


def console_command(get_registry: Callable[[], Optional[CollectorRegistry]]
                    ) -> Callable[..., Result]:
    """The handler of ``SHOW PROMETHEUS_SAMPLES`` over the registry *get_registry* gives."""
    @stats_allowed
    @on_every_worker(keyed(3, [total]))
    def show_samples(console: Any, args: str) -> Result:
        if args.strip():
            raise Refusal(f"SHOW {COMMAND} takes no arguments")
        return show(SAMPLE_COLUMNS, sample_rows(get_registry()))
    return show_samples


class PooledCollector:
    """Serves the families of :data:`COMMAND`'s answer: ``kinds`` gives each family's type
    and help, as its registry declared them."""

    def __init__(self, get_context: Callable[[], Optional["PluginContext"]],
                 kinds: Dict[str, Metric]) -> None:
        self._get_context = get_context
        self._kinds = kinds

    def collect(self) -> Iterator[Metric]:
        context = self._get_context()
        if context is None:
            return
        families: Dict[str, Metric] = {}
        for row in context.show(COMMAND):
            declared = self._kinds.get(row["family"])
            if declared is None:  # another version's family: not ours to describe
                continue
            family = families.get(row["family"])
            if family is None:
                family = families[row["family"]] = Metric(declared.name,
                                                          declared.documentation,
                                                          declared.type)
            family.add_sample(row["sample"], json.loads(row["labels"]), float(row["value"]))
        yield from families.values()


def declared_families(registry: CollectorRegistry) -> Dict[str, Metric]:
    """The families *registry* declares, by name (their type and help)."""
    return {family.name: family for family in registry.collect()}
