"""The OIDC verifier on its own: issuers, discovery, JWKS and userinfo answered by respx."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx

from oscar_manager.auth.oidc import IssuerUnavailable, OidcOptions, OidcVerifier
from oscar_manager.errors import Unauthorized
from tests.support.oidc import (
    ALLOWED_VO,
    EGI_ISSUER,
    OTHER_ISSUER,
    OTHER_VO,
    FakeIssuer,
    rsa_key,
    unsigned,
)

pytestmark = pytest.mark.asyncio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as mocked:
        yield mocked


@pytest.fixture
def egi(router: respx.MockRouter) -> FakeIssuer:
    issuer = FakeIssuer(EGI_ISSUER, router)
    issuer.add_user("alice@egi.test", ALLOWED_VO, OTHER_VO, name="Alice A")
    return issuer


@pytest.fixture
def other(router: respx.MockRouter) -> FakeIssuer:
    issuer = FakeIssuer(OTHER_ISSUER, router, keys=[rsa_key("other-1")])
    issuer.add_user("bob", "/lab/members")
    return issuer


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def verifier(clock: Clock, egi: FakeIssuer, other: FakeIssuer) -> AsyncIterator[OidcVerifier]:
    async with httpx.AsyncClient(timeout=2) as http:
        yield OidcVerifier(
            [EGI_ISSUER, OTHER_ISSUER + "/"],
            http=http,
            options=OidcOptions(userinfo_ttl=60, jwks_refresh_interval=60),
            clock=clock,
        )


async def refused(verifier: OidcVerifier, token: str, reason: str) -> Unauthorized:
    with pytest.raises(Unauthorized, match=reason) as caught:
        await verifier.identify(token)
    assert caught.value.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    return caught.value


async def test_egi_user_with_vos_from_entitlements(verifier: OidcVerifier, egi: FakeIssuer) -> None:
    identity = await verifier.identify(egi.token("alice@egi.test"))
    assert identity.subject == "alice@egi.test"
    assert identity.groups == (ALLOWED_VO, OTHER_VO)
    assert identity.name == "Alice A"
    assert identity.issuer == EGI_ISSUER


async def test_second_issuer_with_its_own_keys_and_claims(verifier: OidcVerifier, other: FakeIssuer) -> None:
    identity = await verifier.identify(other.token("bob"))
    assert (identity.subject, identity.groups) == ("bob", ("/lab/members",))


async def test_discovery_and_keys_fetched_once(verifier: OidcVerifier, egi: FakeIssuer) -> None:
    for user in ("alice@egi.test", "carol", "dave"):
        egi.add_user(user, ALLOWED_VO)
        await verifier.identify(egi.token(user))
    assert egi.discovery.call_count == 1
    assert egi.jwks.call_count == 1
    assert egi.userinfo.call_count == 3


async def test_userinfo_cached_briefly(verifier: OidcVerifier, egi: FakeIssuer, clock: Clock) -> None:
    token = egi.token("alice@egi.test")
    await verifier.identify(token)
    await verifier.identify(token)
    assert egi.userinfo.call_count == 1
    # Membership can change: after the cache time the issuer is asked again and the new groups count.
    egi.add_user("alice@egi.test", OTHER_VO)
    clock.now += 61
    identity = await verifier.identify(token)
    assert egi.userinfo.call_count == 2
    assert identity.groups == (OTHER_VO,)


async def test_concurrent_requests_with_a_new_token_share_one_userinfo_call(
    verifier: OidcVerifier, egi: FakeIssuer
) -> None:
    token = egi.token("alice@egi.test")
    identities = await asyncio.gather(*(verifier.identify(token) for _ in range(5)))
    assert {identity.subject for identity in identities} == {"alice@egi.test"}
    assert egi.userinfo.call_count == 1
    # A failure reaches every waiter and is not remembered.
    failures = [httpx.Response(503)]

    def down_once(request: httpx.Request) -> httpx.Response:
        return failures.pop() if failures else egi._userinfo(request)

    egi.userinfo.mock(side_effect=down_once)
    other = egi.token("alice@egi.test", jti="second")
    results = await asyncio.gather(*(verifier.identify(other) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(result, IssuerUnavailable) for result in results)
    assert egi.userinfo.call_count == 2
    assert (await verifier.identify(other)).subject == "alice@egi.test"


async def test_cached_identity_never_outlives_the_token(
    verifier: OidcVerifier, egi: FakeIssuer, clock: Clock
) -> None:
    token = egi.token("alice@egi.test", lifetime=5)
    await verifier.identify(token)
    clock.now += 10  # past the token's exp, well within the 60 s cache time
    # Still accepted thanks to the 30 s clock-skew leeway, but not from the cache: userinfo is asked again.
    await verifier.identify(token)
    assert egi.userinfo.call_count == 2


async def test_expired(verifier: OidcVerifier, egi: FakeIssuer) -> None:
    await refused(verifier, egi.token("alice@egi.test", lifetime=-120), "expired")
    assert egi.userinfo.call_count == 0


async def test_not_yet_valid(verifier: OidcVerifier, egi: FakeIssuer) -> None:
    await refused(verifier, egi.token("alice@egi.test", nbf=int(time.time()) + 600), "not valid yet")


async def test_issued_in_the_future(verifier: OidcVerifier, egi: FakeIssuer) -> None:
    await refused(verifier, egi.token("alice@egi.test", iat=int(time.time()) + 600), "not valid yet")


async def test_unknown_issuer(verifier: OidcVerifier, router: respx.MockRouter) -> None:
    stranger = FakeIssuer("https://evil.test/realms/egi", router)
    await refused(verifier, stranger.token("alice@egi.test"), "not trusted")
    assert stranger.discovery.call_count == 0


async def test_trusted_issuer_name_signed_with_another_key(verifier: OidcVerifier, egi: FakeIssuer) -> None:
    # Same kid as the issuer's key, different key material: only the signature check can tell.
    forged = egi.token("alice@egi.test", key=rsa_key("attacker"), kid="key-1")
    await refused(verifier, forged, "bad signature")


async def test_token_of_one_issuer_claiming_another(
    verifier: OidcVerifier, egi: FakeIssuer, other: FakeIssuer
) -> None:
    # Signed by the other (trusted) issuer's key, but claiming to come from EGI.
    await refused(verifier, other.token("alice@egi.test", iss=EGI_ISSUER), "no signing key")


async def test_alg_none(verifier: OidcVerifier) -> None:
    now = int(time.time())
    claims = {"iss": EGI_ISSUER, "sub": "alice@egi.test", "exp": now + 600}
    await refused(verifier, unsigned(claims, {"alg": "none", "kid": "key-1"}), "algorithm 'none'")


async def test_hmac_with_the_public_key_as_secret(verifier: OidcVerifier, egi: FakeIssuer) -> None:
    # The classic confusion attack: HS256 "signed" with the issuer's public key (joserfc itself refuses
    # to make one, so it is made by hand).
    public = egi.keys[0].as_pem(private=False)
    claims = {"iss": EGI_ISSUER, "sub": "alice@egi.test", "exp": int(time.time()) + 600}
    unsigned_part = unsigned(claims, {"alg": "HS256", "kid": "key-1"}).rstrip(".")
    mac = hmac.new(public, unsigned_part.encode(), hashlib.sha256).digest()
    token = unsigned_part + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")
    await refused(verifier, token, "algorithm 'HS256'")


@pytest.mark.parametrize(
    "token",
    ["abc", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln", "....", "x" * 100, "a.b.c.d.e"],
)
async def test_malformed(verifier: OidcVerifier, token: str) -> None:
    await refused(verifier, token, "not a signed JWT")


async def test_oversized(verifier: OidcVerifier, egi: FakeIssuer) -> None:
    token = egi.token("alice@egi.test", padding="x" * 9000)
    await refused(verifier, token, "longer than 8192 bytes")
    assert egi.discovery.call_count == 0


@pytest.mark.parametrize("missing", ["exp", "sub"])
async def test_required_claims(verifier: OidcVerifier, egi: FakeIssuer, missing: str) -> None:
    claims: dict[str, Any] = {missing: None}  # None drops the claim
    await refused(verifier, egi.token("alice@egi.test", **claims), f"no '{missing}' claim")


async def test_random_kids_refresh_the_key_set_at_most_once_per_interval(
    verifier: OidcVerifier, egi: FakeIssuer, clock: Clock
) -> None:
    await verifier.identify(egi.token("alice@egi.test"))
    assert egi.jwks.call_count == 1
    refused_early = await refused(verifier, egi.token("alice@egi.test", kid="early"), "no signing key")
    assert refused_early.status_code == 401
    assert egi.jwks.call_count == 1  # the set is younger than the interval: not fetched again
    clock.now += 61
    for _ in range(20):
        await refused(verifier, egi.token("alice@egi.test", kid=secrets.token_hex(8)), "no signing key")
    assert egi.jwks.call_count == 2  # one refresh for the first unknown kid, none for the other 19
    clock.now += 61
    await refused(verifier, egi.token("alice@egi.test", kid="again"), "no signing key")
    assert egi.jwks.call_count == 3


async def test_rotated_key_is_picked_up(verifier: OidcVerifier, egi: FakeIssuer, clock: Clock) -> None:
    await verifier.identify(egi.token("alice@egi.test"))
    clock.now += 61
    egi.keys = [rsa_key("key-2")]
    identity = await verifier.identify(egi.token("alice@egi.test"))
    assert identity.subject == "alice@egi.test"
    assert egi.jwks.call_count == 2


@pytest.mark.parametrize(
    "failure", [httpx.Response(500), httpx.ConnectError("down"), httpx.Response(200, text="<html>")]
)
async def test_discovery_down(
    verifier: OidcVerifier, egi: FakeIssuer, clock: Clock, failure: httpx.Response | Exception
) -> None:
    egi.discovery.mock(side_effect=[failure])
    with pytest.raises(IssuerUnavailable) as caught:
        await verifier.identify(egi.token("alice@egi.test"))
    assert caught.value.status_code == 503
    egi.discovery.mock(side_effect=egi._discovery)
    # Requests right behind a failure fail fast rather than each waiting on a down issuer...
    for _ in range(3):
        with pytest.raises(IssuerUnavailable):
            await verifier.identify(egi.token("alice@egi.test"))
    assert egi.discovery.call_count == 1
    # ...and a few seconds later the issuer is asked again: once it answers, users get in.
    clock.now += 6
    assert (await verifier.identify(egi.token("alice@egi.test"))).subject == "alice@egi.test"
    assert egi.discovery.call_count == 2


async def test_issuer_briefly_down_keeps_what_was_fetched(
    verifier: OidcVerifier, egi: FakeIssuer, clock: Clock
) -> None:
    await verifier.identify(egi.token("alice@egi.test"))
    clock.now += 3601  # discovery document and key set are due for a refresh...
    egi.discovery.mock(side_effect=httpx.ConnectError("down"))
    egi.jwks.mock(side_effect=httpx.ConnectError("down"))
    # ...which fails: the ones in hand keep serving.
    assert (await verifier.identify(egi.token("alice@egi.test"))).subject == "alice@egi.test"
    assert (egi.discovery.call_count, egi.jwks.call_count) == (2, 2)  # both tried, both failed


async def test_discovery_for_another_issuer_is_refused(verifier: OidcVerifier, egi: FakeIssuer) -> None:
    egi.discovery_issuer = "https://evil.test/realms/egi"
    with pytest.raises(IssuerUnavailable, match="names issuer"):
        await verifier.identify(egi.token("alice@egi.test"))


async def test_insecure_discovery_is_refused(verifier: OidcVerifier, egi: FakeIssuer) -> None:
    original = egi._discovery

    def http_keys(request: httpx.Request) -> httpx.Response:
        document = original(request).json()
        return httpx.Response(200, json={**document, "jwks_uri": "http://aai.egi.test/keys"})

    egi.discovery.mock(side_effect=http_keys)
    with pytest.raises(IssuerUnavailable, match="https"):
        await verifier.identify(egi.token("alice@egi.test"))


@pytest.mark.parametrize(
    "failure", [httpx.Response(502), httpx.ReadTimeout("slow"), httpx.Response(200, text="x")]
)
async def test_userinfo_down_admits_nobody(
    verifier: OidcVerifier, egi: FakeIssuer, failure: httpx.Response | Exception
) -> None:
    egi.userinfo.mock(side_effect=[failure])
    with pytest.raises(IssuerUnavailable, match="userinfo"):
        await verifier.identify(egi.token("alice@egi.test"))


async def test_userinfo_refusing_the_token(verifier: OidcVerifier, egi: FakeIssuer) -> None:
    # A revoked token: signature and times are fine, but the issuer no longer knows it.
    egi.userinfo.mock(side_effect=[httpx.Response(401)])
    await refused(verifier, egi.token("alice@egi.test"), "refused by the userinfo endpoint")


async def test_userinfo_about_someone_else(verifier: OidcVerifier, egi: FakeIssuer) -> None:
    egi.userinfo.mock(side_effect=[httpx.Response(200, json={"sub": "mallory", "entitlements": []})])
    await refused(verifier, egi.token("alice@egi.test"), "another subject")


async def test_refusals_are_logged_without_the_token(
    verifier: OidcVerifier, egi: FakeIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    token = egi.token("alice@egi.test", lifetime=-120)
    with caplog.at_level(logging.WARNING, logger="oscar_manager.auth.oidc"):
        await refused(verifier, token, "expired")
    assert "expired" in caplog.text
    assert token not in caplog.text
    assert token.split(".")[2] not in caplog.text


async def test_claims_of_refused_tokens_are_escaped_and_short(
    verifier: OidcVerifier, router: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    # Whatever an attacker puts in an unverified claim must not forge log lines or flood them.
    stranger = FakeIssuer("https://evil.test/realms/egi", router)
    token = stranger.token("alice@egi.test", iss="https://evil.test/\nWARNING forged line" + "x" * 4000)
    with caplog.at_level(logging.WARNING, logger="oscar_manager.auth.oidc"):
        error = await refused(verifier, token, "not trusted")
    assert "\n" not in caplog.records[-1].getMessage()
    assert len(error.message) < 200
