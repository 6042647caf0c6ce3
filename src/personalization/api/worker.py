"""The app factory of the API server's worker processes (``serve --workers N`` with N > 1).

uvicorn starts its workers through multiprocessing, without a way to arm the Linux
parent-death signal before they run; a worker whose server process was SIGKILLed would
keep its socket and serve on, unsupervised.  Each worker arms the signal itself here,
before building the app: SIGTERM, so it drains its requests and group commits and exits.
"""

from __future__ import annotations

import signal

from fastapi import FastAPI

from personalization.api.app import create_app
from personalization.platform import parentdeath


def create_worker_app() -> FastAPI:
    """``create_app()`` in a worker that stops when its server process dies."""
    parentdeath.arm_current(signal.SIGTERM)
    return create_app()
