"""``/system/logs/{service}``: the upstream job list (``{"jobs": {...}, "next_page": ...}``) and job logs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Response, status
from fastapi.responses import PlainTextResponse

from oscar_manager.api.deps import BackendDep, CallerDep, ReadingDep, SettingsDep, TransactionDep
from oscar_manager.domain.jobs import JobRecord
from oscar_manager.operations import jobs

router = APIRouter(prefix="/system/logs", tags=["logs"])


def _time(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def _job_info(job: JobRecord) -> dict[str, Any]:
    info: dict[str, Any] = {"status": job.status.value, "creation_time": _time(job.created_at)}
    if job.started_at:
        info["start_time"] = _time(job.started_at)
    if job.finished_at:
        info["finish_time"] = _time(job.finished_at)
    return info


@router.get("/{service}", summary="List a service's jobs, newest first, paged by next_page")
async def list_jobs(
    service: str, caller: CallerDep, tx: ReadingDep, settings: SettingsDep, page: str = ""
) -> dict[str, Any]:
    result = await jobs.page(
        tx, principal=caller, service=service, page=page, limit=settings.job_listing_limit
    )
    body: dict[str, Any] = {"jobs": {job.id: _job_info(job) for job in result.jobs}}
    if result.next_page:
        body["next_page"] = result.next_page
    if result.remaining is not None:
        body["remaining_jobs"] = result.remaining
    return body


@router.delete(
    "/{service}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete the service's succeeded jobs (all of them with all=true)",
)
async def delete_jobs(
    service: str, caller: CallerDep, tx: TransactionDep, backend: BackendDep, all: bool = False
) -> Response:
    await jobs.delete_many(tx, principal=caller, backend=backend, service=service, everything=all)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{service}/{job}",
    response_class=PlainTextResponse,
    summary="A job's log (kept after it ends); timestamps=true prefixes each line with its RFC 3339 time",
)
async def job_log(
    service: str, job: str, caller: CallerDep, tx: TransactionDep, timestamps: bool = False
) -> str:
    return await jobs.log(tx, principal=caller, service=service, job_id=job, timestamps=timestamps)


@router.delete(
    "/{service}/{job}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a job (stopping it if it runs) and its log",
)
async def delete_job(
    service: str, job: str, caller: CallerDep, tx: TransactionDep, backend: BackendDep
) -> Response:
    await jobs.delete(tx, principal=caller, backend=backend, service=service, job_id=job)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
