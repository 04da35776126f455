"""Liveness and readiness, without authentication (for orchestrators and compose healthchecks)."""

from __future__ import annotations

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from services.api.deps import SettingsDep
from services.common.probes import Probe, check_parts, ping_broker, ping_database, ping_embedded_worker

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readyz(settings: SettingsDep) -> dict[str, object] | JSONResponse:
    """200 when the database and the task broker both answer within ``MONA_READY_TIMEOUT_S`` (and, under
    ``mona serve``, its worker runs), else 503.

    The answer names the parts and their state (``ok``, ``unavailable``, ``timed out``), never a host or URL.
    Workers of a server deployment are not checked: the API is ready without them (GPU workers scale to zero).
    """
    timeout = settings.ready_timeout_s
    probes: dict[str, Probe] = {
        "database": lambda: ping_database(settings, timeout),
        "broker": lambda: ping_broker(settings, timeout),
    }
    if settings.ready_requires_worker:
        probes["worker"] = lambda: ping_embedded_worker(settings)
    checks = check_parts(probes, timeout)
    if all(state == "ok" for state in checks.values()):
        return {"status": "ready", "checks": checks}
    down = ", ".join(f"{name} {state}" for name, state in checks.items() if state != "ok")
    parts = list(probes)
    detail = f"expected a reachable {', '.join(parts[:-1])} and {parts[-1]}, got {down}"
    return JSONResponse(status_code=status.HTTP_503_SERVICE_UNAVAILABLE, content={"detail": detail, "checks": checks})
