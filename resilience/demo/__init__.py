"""``python -m resilience demo``: a live gateway in front of five simulated providers, all on 127.0.0.1.

* :mod:`resilience.demo.upstreams`: the providers (healthy, flaky, outage, throttled, streaming);
* :mod:`resilience.demo.gateway`: the Starlette gateway, wired as the SPEC's "Wiring", with a
  route (``demo-route``: outage, then healthy);
* :mod:`resilience.demo.load`: the load generator and its progress line;
* :mod:`resilience.demo.tracing`: ``DEMO_TRACE=1``, spans printed to the console;
* :mod:`resilience.demo.servers`: uvicorn servers sharing one asyncio loop;
* :mod:`resilience.demo.runner`: options, start, stop.

Needs the ``demo`` extra (uvicorn; the OpenTelemetry SDK for ``DEMO_TRACE``):
``pip install 'llm-resilience[demo]'``.
"""

from __future__ import annotations

from resilience.demo.runner import DemoOptions, run

__all__ = ["DemoOptions", "run"]
