"""The core: windows, breakers, health, policies, providers, registry, guard.

It imports no HTTP client, ASGI framework or exporter (import-linter's layers contract).
"""
