"""``python -m resilience demo``: a live gateway in front of four simulated providers, all on 127.0.0.1.

* :mod:`resilience.demo.upstreams`: the providers (healthy, flaky, outage, throttled);
* :mod:`resilience.demo.gateway`: the Starlette gateway, wired as the SPEC's "Wiring";
* :mod:`resilience.demo.load`: the load generator and its progress line;
* :mod:`resilience.demo.servers`: uvicorn servers sharing one asyncio loop;
* :mod:`resilience.demo.runner`: options, start, stop.

Needs the ``demo`` extra (uvicorn): ``pip install 'resilience[demo]'``.
"""

from __future__ import annotations

from resilience.demo.runner import DemoOptions, run

__all__ = ["DemoOptions", "run"]
