"""The transport over httpx2 and httpx: resolution, attempts, retries, streams, usage, probes."""
