"""Who is calling, from the ``Authorization`` header: Basic for the admin, Bearer for OIDC users.

With OIDC off (the default) only Basic exists, exactly as before. With it on, a Bearer token is an OIDC
access token; its holder is admitted when one of their groups is in ``OIDC_GROUPS`` (an empty list
admits nobody, as upstream). The OIDC machinery (``auth.oidc``: joserfc, authlib, httpx) is imported only
when OIDC is on: with it off, the manager does not carry it in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from oscar_manager.auth.basic import BasicAuthenticator
from oscar_manager.auth.tokens import bearer_token, jwt_issuer
from oscar_manager.domain.principal import Principal
from oscar_manager.errors import Forbidden
from oscar_manager.settings import Settings

if TYPE_CHECKING:
    import httpx

    from oscar_manager.auth.oidc import OidcVerifier

log = logging.getLogger(__name__)


class Authenticator:
    def __init__(
        self,
        basic: BasicAuthenticator,
        oidc: OidcVerifier | None = None,
        *,
        groups: Iterable[str] = (),
        users_admin: Iterable[str] = (),
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.basic = basic
        self.oidc = oidc
        self._groups = list(groups)
        self._users_admin = frozenset(users_admin)
        self._http = http  # owned: closed by aclose()

    @property
    def oidc_enabled(self) -> bool:
        return self.oidc is not None

    def own_credentials(self, authorization: str | None) -> bool:
        """Whether ``authorization`` would authenticate to this manager: the admin's Basic credentials
        (right or wrong), or a JWT from an issuer it trusts. Such a header never goes on to an exposed
        service's instance, which runs a stranger's script: a browser sends the admin's cached Basic
        credentials with every request below the manager's paths, exposed services' included."""
        if self.basic.names_the_admin(authorization):
            return True
        token = bearer_token(authorization)
        if token is None or self.oidc is None:
            return False
        return jwt_issuer(token) in self.oidc.issuers

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller, or 401 (no or bad credentials), 403 (a user of no allowed group), 503 (issuer down)."""
        token = bearer_token(authorization)
        if token is not None and self.oidc is not None:
            return await self.user(token)
        return self.basic.authenticate(authorization)

    async def user(self, token: str) -> Principal:
        """The OIDC user a bearer token belongs to, if admitted on this cluster."""
        if self.oidc is None:
            raise RuntimeError("OIDC is not enabled")
        identity = await self.oidc.identify(token)
        if not any(group in identity.groups for group in self._groups):
            log.warning("OIDC user %r refused: in none of the groups of OIDC_GROUPS", identity.subject)
            raise Forbidden(
                f"user {identity.subject!r} is not a member of any group allowed here "
                f"({', '.join(self._groups) or 'none configured'})"
            )
        return Principal(
            uid=identity.subject,
            name=identity.name,
            groups=identity.groups,
            users_admin=identity.subject in self._users_admin,
        )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def build_authenticator(settings: Settings) -> Authenticator:
    """The authenticator the settings ask for; with OIDC on it owns an HTTP client for the issuers."""
    basic = BasicAuthenticator(username=settings.oscar_username, password=settings.oscar_password)
    if not settings.oidc_enable:
        return Authenticator(basic)
    import httpx

    from oscar_manager.auth.oidc import OidcOptions, OidcVerifier

    http = httpx.AsyncClient(
        timeout=httpx.Timeout(settings.oscar_oidc_timeout),
        # An issuer's URLs are taken as given: a redirect could lead the manager anywhere.
        follow_redirects=False,
    )
    options = OidcOptions(
        userinfo_ttl=settings.oscar_oidc_userinfo_ttl,
        jwks_refresh_interval=settings.oscar_oidc_jwks_refresh_interval,
        max_token_bytes=settings.oscar_oidc_max_token_bytes,
    )
    verifier = OidcVerifier(settings.oidc_issuers, http=http, options=options)
    return Authenticator(
        basic, verifier, groups=settings.oidc_groups, users_admin=settings.users_admin, http=http
    )
