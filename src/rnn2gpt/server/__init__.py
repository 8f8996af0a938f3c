"""Serving models over HTTP: an OpenAI-compatible API with continuous batching, and a web page.

- app.py: :func:`create_app` (the FastAPI routes) and :func:`serve` (uvicorn)
- hosts.py: the loaded models, their names and what each can do
- completions.py: ``/v1/completions`` requests in and out of the scheduler
- schemas.py: the request and response bodies (the OpenAPI schema)
- metrics.py: Prometheus metrics (``GET /metrics``)
- static/: the playground (one HTML, one JS and one CSS file; nothing from other hosts)

The top floor, beside ``cli``: it may import every floor below. FastAPI, uvicorn and
prometheus-client come with the ``server`` extra and are imported only here.
"""

from .app import create_app, serve
from .hosts import ServerSettings, model_name

__all__ = ["ServerSettings", "create_app", "model_name", "serve"]
