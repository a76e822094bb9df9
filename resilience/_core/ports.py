"""What the core is given by the layers above it, as protocols: probes and metrics exporters.

The core never imports the HTTP layer or an exporter, not even for typing;
they plug in here. ``resilience/__init__`` installs the Prometheus exporter.
"""

from __future__ import annotations

from typing import Any, Protocol

from resilience._core.snapshot import ProbeSnapshot


class Probe(Protocol):
    """An active check of one provider (:class:`resilience.HttpProbe`)."""

    def snapshot(self) -> ProbeSnapshot:
        """What the probe has seen."""
        ...

    async def check(self, provider: Any, client: Any) -> bool:
        """Check once; whether the provider is up."""
        ...


class Exporter(Protocol):
    """What ``ProviderRegistry.register_metrics`` returns (:class:`resilience.ResilienceCollector`)."""

    def register(self, prometheus_registry: Any = None) -> Any:
        """Register into a Prometheus registry (``prometheus_client.REGISTRY`` by default)."""
        ...

    def unregister(self, prometheus_registry: Any = None) -> None:
        """Leave a Prometheus registry (``prometheus_client.REGISTRY`` by default)."""
        ...


class ExporterFactory(Protocol):
    """Builds an :class:`Exporter` for a registry."""

    def __call__(self, registry: Any, *, namespace: str, model_metrics: bool) -> Exporter:
        """The exporter of ``registry``."""
        ...
