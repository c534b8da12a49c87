"""OIDC bearer tokens: who a token says its holder is, checked against the issuers we trust.

A token is checked locally first (size, form, algorithm, issuer, signature, ``exp``/``nbf``), so a bad one
costs no request to anyone. Only then is the issuer's userinfo endpoint asked for the holder's groups, as
upstream does (access tokens of EGI Check-In carry no entitlements themselves). Each issuer's discovery
document and signing keys are fetched on first use and cached; an unknown ``kid`` refreshes the keys (the
issuer may have rotated them), at most once per ``jwks_refresh_interval`` so that tokens with made-up
``kid``s cannot make us fetch the key set on every request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
from authlib.oidc.discovery import OpenIDProviderMetadata, get_well_known_url
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import Key, KeySet
from joserfc.jws import extract_compact

from oscar_manager.auth.groups import groups_from_claims
from oscar_manager.errors import OscarError, Unauthorized

log = logging.getLogger(__name__)
T = TypeVar("T")

# Asymmetric algorithms only: "none" proves nothing, and an HMAC "key" taken from a public key set would
# let anyone sign.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")

INVALID_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class IssuerUnavailable(OscarError):
    """The issuer could not be asked (down, slow or answering nonsense): the token is neither good nor bad
    yet, so the caller gets 503 and may retry. Never a reason to admit anyone."""

    status_code = 503

    def __init__(self, message: str) -> None:
        # Failures are remembered for a few seconds (``OidcOptions.retry_after``): no use retrying sooner.
        super().__init__(message, headers={"Retry-After": "5"})


def invalid_token(reason: str) -> Unauthorized:
    return Unauthorized(f"invalid bearer token: {reason}", headers=INVALID_TOKEN)


def shown(value: object) -> str:
    """A value read from an unverified token, safe for a log line or an answer: escaped and short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def fingerprint(token: str) -> str:
    """What the logs name a token by: enough to correlate two lines, useless to replay."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class OidcIdentity:
    issuer: str
    subject: str
    groups: tuple[str, ...]
    name: str = ""


@dataclass(frozen=True, slots=True)
class OidcOptions:
    # How long the groups read from userinfo are trusted for a token (never past the token's ``exp``).
    userinfo_ttl: float = 60.0
    userinfo_cache_size: int = 10_000
    # Discovery document and key set are fetched again after this long.
    metadata_ttl: float = 3600.0
    # The least time between two key-set fetches caused by an unknown ``kid``.
    jwks_refresh_interval: float = 60.0
    # After a failed fetch, requests fail at once (503) for this long before the issuer is asked again.
    retry_after: float = 5.0
    max_token_bytes: int = 8192
    # Clock skew allowed on ``exp``, ``nbf`` and ``iat``.
    leeway: int = 30


@dataclass(frozen=True, slots=True)
class IssuerMetadata:
    issuer: str
    jwks_uri: str
    userinfo_endpoint: str


class _Cached(Generic[T]):
    """A document fetched from an issuer: when it was fetched, and when a fetch was last tried (whatever
    its outcome: failures must not be retried by every request either). One fetch at a time (``lock``):
    a burst of requests on a cold or rotated issuer makes one request."""

    def __init__(self, what: str, *, url: str, clock: Callable[[], float], retry_after: float) -> None:
        self.what = what
        self._url = url
        self._clock = clock
        self._retry_after = retry_after
        self.value: T | None = None
        self.fetched_at = float("-inf")
        self.tried_at = float("-inf")
        self.lock = asyncio.Lock()

    async def refresh(self, fetch: Callable[[], Awaitable[T]], *, interval: float) -> T:
        """Fetch again unless a fetch was tried less than ``interval`` ago (``retry_after`` while there is
        nothing in hand: while an issuer is down, requests fail fast instead of each waiting for its own
        timeout). A failed fetch keeps what was in hand. Called under ``lock``."""
        have = self.value is not None
        if self._clock() - self.tried_at >= (interval if have else self._retry_after):
            self.tried_at = self._clock()
            try:
                self.value, self.fetched_at = await fetch(), self._clock()
            except IssuerUnavailable as exc:
                if not have:
                    raise
                # Keep what we had: an issuer briefly down must not lock out every user.
                log.warning("%s; keeping the %s fetched before", exc.message, self.what)
        if self.value is None:
            raise IssuerUnavailable(f"the {self.what} of {self._url} could not be fetched just now")
        return self.value


class Issuer:
    """One trusted issuer: its discovery document and signing keys, fetched lazily and cached."""

    def __init__(
        self, url: str, *, http: httpx.AsyncClient, options: OidcOptions, clock: Callable[[], float]
    ) -> None:
        self.url = url
        self._http = http
        self._options = options
        self._clock = clock
        retry_after = options.retry_after
        self._metadata: _Cached[IssuerMetadata] = _Cached(
            "discovery document", url=url, clock=clock, retry_after=retry_after
        )
        self._keys: _Cached[KeySet] = _Cached("key set", url=url, clock=clock, retry_after=retry_after)

    async def _get_json(self, url: str, what: str, *, token: str | None = None) -> dict[str, Any]:
        """A JSON object from the issuer; with ``token`` (userinfo), a 401/403 means the token is bad."""
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = await self._http.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise IssuerUnavailable(f"cannot reach the {what} of {self.url}: {type(exc).__name__}") from None
        if token is not None and response.status_code in (401, 403):
            raise invalid_token(f"refused by the {what} of {self.url} ({response.status_code})")
        if response.status_code != 200:
            raise IssuerUnavailable(f"the {what} of {self.url} answered {response.status_code}")
        try:
            document = response.json()
        except ValueError:
            raise IssuerUnavailable(f"the {what} of {self.url} is not JSON") from None
        if not isinstance(document, dict):
            raise IssuerUnavailable(f"the {what} of {self.url} is not a JSON object")
        return document

    async def _discover(self) -> IssuerMetadata:
        document = OpenIDProviderMetadata(
            await self._get_json(get_well_known_url(self.url, external=True), "discovery document")
        )
        issuer, jwks_uri, userinfo = (
            document.get(key) for key in ("issuer", "jwks_uri", "userinfo_endpoint")
        )
        try:
            if not isinstance(issuer, str):
                raise ValueError("no issuer")
            # https only (AUTHLIB_INSECURE_TRANSPORT=1 allows http, for a local test issuer).
            document.validate_issuer()
            document.validate_jwks_uri()  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise IssuerUnavailable(f"the discovery document of {self.url} is invalid: {exc}") from None
        # OIDC Discovery 1.0 §4.3: the document must be for the issuer we asked, or anyone able to answer
        # for that URL could vouch for another issuer.
        if issuer.rstrip("/") != self.url.rstrip("/"):
            raise IssuerUnavailable(f"the discovery document of {self.url} names issuer {issuer!r}")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise IssuerUnavailable(f"the discovery document of {self.url} has no jwks_uri")
        if not isinstance(userinfo, str) or not userinfo:
            raise IssuerUnavailable(f"the discovery document of {self.url} has no userinfo_endpoint")
        return IssuerMetadata(issuer=issuer, jwks_uri=jwks_uri, userinfo_endpoint=userinfo)

    def _fresh(self, cached: _Cached[Any]) -> bool:
        return self._clock() - cached.fetched_at < self._options.metadata_ttl

    async def metadata(self) -> IssuerMetadata:
        document = self._metadata.value
        if document is not None and self._fresh(self._metadata):
            return document
        async with self._metadata.lock:
            document = self._metadata.value
            if document is not None and self._fresh(self._metadata):
                return document
            return await self._metadata.refresh(self._discover, interval=self._options.retry_after)

    async def _fetch_keys(self) -> KeySet:
        document = await self._get_json((await self.metadata()).jwks_uri, "key set")
        try:
            return KeySet.import_key_set(document)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise IssuerUnavailable(f"the key set of {self.url} is unusable: {exc}") from None

    async def signing_key(self, kid: str | None) -> Key:
        keys = self._keys.value
        if keys is None or not self._fresh(self._keys):
            async with self._keys.lock:
                keys = await self._keys.refresh(self._fetch_keys, interval=self._options.retry_after)
        try:
            return keys.get_by_kid(kid)
        except InvalidKeyIdError:
            pass
        # An unknown kid: the issuer may have rotated its keys. Ask again, but at most once per interval,
        # so made-up kids cannot make us fetch the key set on every request.
        async with self._keys.lock:
            if self._keys.value is keys:
                keys = await self._keys.refresh(
                    self._fetch_keys, interval=self._options.jwks_refresh_interval
                )
            else:
                keys = self._keys.value or keys  # another request refreshed it meanwhile
        try:
            return keys.get_by_kid(kid)
        except InvalidKeyIdError:
            raise invalid_token(f"no signing key {shown(kid)} at {self.url}") from None

    async def userinfo(self, token: str) -> dict[str, Any]:
        endpoint = (await self.metadata()).userinfo_endpoint
        return await self._get_json(endpoint, "userinfo endpoint", token=token)


class _UserinfoCache:
    """Identities by token digest, each kept until its own deadline; the least recently used go first."""

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, OidcIdentity]] = OrderedDict()

    def get(self, key: str) -> OidcIdentity | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        deadline, identity = entry
        if self._clock() >= deadline:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return identity

    def put(self, key: str, identity: OidcIdentity, *, ttl: float) -> None:
        if ttl <= 0:
            return
        self._entries[key] = (self._clock() + ttl, identity)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, read before any check: only to choose the issuer and key."""
    try:
        compact = extract_compact(token.encode())
        header = dict(compact.headers())
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeError, TypeError):
        raise invalid_token("not a signed JWT") from None
    if not isinstance(claims, dict):
        raise invalid_token("not a signed JWT")
    return header, claims


class OidcVerifier:
    """Turns a bearer token into an :class:`OidcIdentity`, or raises 401 (bad token) / 503 (issuer down)."""

    def __init__(
        self,
        issuers: Iterable[str],
        *,
        http: httpx.AsyncClient,
        options: OidcOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.options = options or OidcOptions()
        self._now = now
        self._clock = clock
        self.issuers = {
            url.rstrip("/"): Issuer(url, http=http, options=self.options, clock=clock) for url in issuers
        }
        self._cache = _UserinfoCache(self.options.userinfo_cache_size, clock)
        self._pending: dict[str, asyncio.Future[OidcIdentity]] = {}

    async def identify(self, token: str) -> OidcIdentity:
        try:
            return await self._identify(token)
        except OscarError as exc:
            # The reason and the token's fingerprint, never the token: logs are read by more people.
            log.warning("OIDC token %s refused: %s", fingerprint(token), exc.message)
            raise

    async def _identify(self, token: str) -> OidcIdentity:
        if len(token.encode()) > self.options.max_token_bytes:
            raise invalid_token(f"longer than {self.options.max_token_bytes} bytes")
        claims = await self._verified_claims(token)
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        # A client often fires several requests at once with a new token (the dashboard on log-in): they
        # share one userinfo request. Shielded, so one caller going away does not fail the others.
        pending = self._pending.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._userinfo_identity(token, claims, digest))
            self._pending[digest] = pending
            pending.add_done_callback(lambda _: self._pending.pop(digest, None))
        return await asyncio.shield(pending)

    async def _userinfo_identity(self, token: str, claims: dict[str, Any], digest: str) -> OidcIdentity:
        issuer = self.issuers[str(claims["iss"]).rstrip("/")]
        userinfo = await issuer.userinfo(token)
        subject = claims["sub"]
        # OIDC Core §5.3.2: userinfo about someone else must not be used.
        if userinfo.get("sub") != subject:
            raise invalid_token("the userinfo endpoint describes another subject")
        name = userinfo.get("name")
        identity = OidcIdentity(
            issuer=issuer.url,
            subject=subject,
            groups=tuple(groups_from_claims(issuer.url, userinfo)),
            name=name if isinstance(name, str) else "",
        )
        self._cache.put(
            digest, identity, ttl=min(self.options.userinfo_ttl, float(claims["exp"]) - self._now())
        )
        return identity

    async def _verified_claims(self, token: str) -> dict[str, Any]:
        header, unverified = _unverified(token)
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise invalid_token(f"algorithm {shown(alg)} is not accepted")
        iss = unverified.get("iss")
        issuer = self.issuers.get(iss.rstrip("/")) if isinstance(iss, str) else None
        if issuer is None:
            raise invalid_token(f"issuer {shown(iss)} is not trusted here")
        kid = header.get("kid")
        key = await issuer.signing_key(kid if isinstance(kid, str) else None)
        try:
            claims = jwt.decode(token, key, algorithms=[alg]).claims
        except BadSignatureError:
            raise invalid_token("bad signature") from None
        except (JoseError, ValueError) as exc:
            raise invalid_token(f"cannot be verified ({type(exc).__name__})") from None
        metadata = await issuer.metadata()
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self._now()),
            leeway=self.options.leeway,
            iss={"essential": True, "value": metadata.issuer},
            sub={"essential": True},
            exp={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise invalid_token("expired") from None
        except MissingClaimError as exc:
            raise invalid_token(f"no {exc.claim!r} claim") from None
        except InvalidClaimError as exc:
            reason = "not valid yet" if exc.claim in ("nbf", "iat") else f"invalid {exc.claim!r} claim"
            raise invalid_token(reason) from None
        return claims
