"""``/events/minio``: where the manager's MinIO webhook target posts bucket notifications."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request

from oscar_manager.api.deps import BodyDep, IntakeDep
from oscar_manager.auth.tokens import BEARER_CHALLENGE, bearer_token, token_matches
from oscar_manager.domain.events import object_events, parse_json
from oscar_manager.errors import BadRequest, Unauthorized
from oscar_manager.operations.offload import off_loop

router = APIRouter(tags=["events"])


async def webhook_caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    expected: str = request.app.state.webhook_token
    presented = bearer_token(authorization)
    if presented is None or not token_matches(expected, presented):
        raise Unauthorized("the webhook token is missing or wrong", headers=BEARER_CHALLENGE)


@router.post(
    "/events/minio",
    summary="Bucket notifications from MinIO's webhook target (Bearer: the manager's webhook token)",
    dependencies=[Depends(webhook_caller)],
    responses={
        400: {"description": "Not a bucket notification, or a malformed one: nothing was recorded"},
        401: {"description": "Missing or wrong webhook token"},
    },
)
async def minio_notification(body: BodyDep, intake: IntakeDep) -> dict[str, int]:
    """Each object is recorded (once) for every service whose input folder holds it; the answer counts
    what was new, already known, and under no service's input."""
    events = await off_loop(lambda: object_events(parse_json(body)), size=len(body))
    if events is None:
        raise BadRequest("the body is not a bucket notification (a JSON object with 'Records')")
    routed = await intake.storage_events(events)
    return {"new": routed.new, "duplicates": routed.duplicates, "ignored": routed.ignored}
