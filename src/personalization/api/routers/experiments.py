"""HTTP routes of experiments: metric definitions and an experiment's phases and results.

Reads need the ``read`` scope; metric writes the ``admin`` scope and are audited.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from personalization.api.auth import require
from personalization.api.deps import platform
from personalization.api.responses import JSONBody
from personalization.core.experiments import MetricIn
from personalization.experiments.service import ExperimentService

router = APIRouter(tags=["experiments"])
_read = [require("read")]


def _svc(request: Request) -> ExperimentService:
    return platform(request).experiments


@router.put("/v1/metrics/{name}", dependencies=[require("admin", audit_action="metric.put")])
async def put_metric(name: str, body: MetricIn, request: Request) -> JSONBody:
    """Create (201) or replace (200) a metric definition."""
    metric, created = await _svc(request).put_metric(name, body)
    return JSONBody(metric.model_dump(mode="json"), status_code=201 if created else 200)


@router.get("/v1/metrics", dependencies=_read)
async def list_metrics(request: Request) -> JSONBody:
    """Every metric definition, by name."""
    return JSONBody({"metrics": [m.model_dump(mode="json") for m in await _svc(request).list_metrics()]})


@router.get("/v1/metrics/{name}", dependencies=_read)
async def get_metric(name: str, request: Request) -> JSONBody:
    """One metric definition."""
    return JSONBody((await _svc(request).get_metric(name)).model_dump(mode="json"))


@router.delete("/v1/metrics/{name}", status_code=204, dependencies=[require("admin", audit_action="metric.delete")])
async def delete_metric(name: str, request: Request) -> Response:
    """Delete a metric definition (results of it can no longer be asked for)."""
    await _svc(request).delete_metric(name)
    return Response(status_code=204)


@router.get("/v1/experiments/{flag}", dependencies=_read)
async def experiment_summary(flag: str, request: Request) -> JSONBody:
    """The flag's phases (rules versions, split) with exposure counts per variant and reason."""
    return JSONBody(await _svc(request).summary(flag))


@router.get("/v1/experiments/{flag}/results", dependencies=_read)
async def experiment_results(
    flag: str,
    request: Request,
    metric: str = Query(..., min_length=1, max_length=64, description="name of a metric definition"),
    cuped: bool = Query(False, description="adjust with the pre-exposure value of the metric (CUPED)"),
    phase: int | None = Query(None, ge=1, description="phase of the flag's rules (default: the current one)"),
) -> JSONBody:
    """Relative uplift of ``on`` over ``off`` (Welch, delta method), SRM p-value, chance to win."""
    return JSONBody(await _svc(request).results(flag, metric, phase=phase, cuped=cuped))
