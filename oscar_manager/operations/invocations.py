"""Who may invoke a service (``/job``, ``/run``) and the sync run itself."""

from __future__ import annotations

from dataclasses import dataclass

from oscar_manager.auth.authenticator import Authenticator
from oscar_manager.auth.tokens import BEARER_CHALLENGE, bearer_token, is_service_token, token_matches
from oscar_manager.backends.base import Backend, SyncRequest
from oscar_manager.domain.access import can_view
from oscar_manager.domain.service import Service
from oscar_manager.errors import Forbidden, NotFound, Unauthorized
from oscar_manager.operations.offload import off_loop
from oscar_manager.registry import Database
from oscar_manager.supervisor.answer import SyncAnswer
from oscar_manager.supervisor.reads import check_invocation


@dataclass(frozen=True, slots=True)
class Invocation:
    service: Service
    # The OIDC user invoking (their jobs are theirs to list); None for the service token and the admin.
    user: str | None = None
    # The admin (Basic) may name objects of any bucket in a storage event; everyone else only objects
    # under the service's inputs (buckets have no owners yet that would let users read their own).
    any_bucket: bool = False


async def service_for_invocation(
    database: Database, *, name: str, authorization: str | None, authenticator: Authenticator
) -> Invocation:
    """The service, if the caller presents its token (Bearer), the token of an OIDC user who may see the
    service (with OIDC on), or the admin's Basic credentials.

    Credentials are checked before the service is looked up: a caller without valid ones gets the same
    401 whether the service exists or not, so strangers cannot probe for service names. Only admitted
    callers (the admin, an OIDC user) learn that a service does not exist (404).
    """
    if not authorization:
        raise Unauthorized(
            "an Authorization header is required (Bearer <service token>)", headers=BEARER_CHALLENGE
        )
    token = bearer_token(authorization)
    if token is not None and (is_service_token(token) or not authenticator.oidc_enabled):
        # As upstream: 64 characters is a service token, anything else an OIDC token (a JWT is longer).
        service = await database.service(name)
        if service is None or not token_matches(service.token, token):
            raise Unauthorized("invalid token for this service", headers=BEARER_CHALLENGE)
        return Invocation(service)
    if token is not None:
        user = await authenticator.user(token)
        service = await _existing(database, name)
        if not can_view(user, service):
            raise Forbidden(f"user {user.uid!r} may not invoke service {name!r}")
        return Invocation(service, user=user.uid)
    authenticator.basic.authenticate(authorization)  # the admin may invoke any service; raises 401 otherwise
    return Invocation(await _existing(database, name), any_bucket=True)


async def _existing(database: Database, name: str) -> Service:
    service = await database.service(name)
    if service is None:
        raise NotFound(f"service {name!r} not found")
    return service


async def run_sync(
    backend: Backend, *, invocation: Invocation, body: bytes, time_limit: float, max_response_bytes: int
) -> SyncAnswer:
    """The answer, to be streamed and then closed."""
    service = invocation.service
    any_bucket = invocation.any_bucket
    await off_loop(lambda: check_invocation(body, service=service, any_bucket=any_bucket), size=len(body))
    request = SyncRequest(
        service=service,
        body=body,
        timeout=time_limit,
        any_bucket=any_bucket,
        max_response_bytes=max_response_bytes,
    )
    return await backend.run_sync(request)
