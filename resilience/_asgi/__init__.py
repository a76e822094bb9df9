"""Starlette glue: the middleware, the dashboard router and its static page."""
