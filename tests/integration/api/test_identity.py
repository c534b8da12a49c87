"""OIDC users through the HTTP API, on SQLite and PostgreSQL: admission, the upstream visibility matrix
(oscar-api.md §6 item 2), VOs, /job and /run with service or user tokens, bad tokens, CORS."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import respx

from oscar_manager.settings import Settings
from tests.support.app import app_client
from tests.support.factories import ADMIN_PASSWORD, service_body
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

LAB_GROUP = "/lab/oscar"
DASHBOARD = "https://dashboard.oscar.test"
ADMIN = "Basic " + base64.b64encode(f"oscar:{ADMIN_PASSWORD}".encode()).decode()
ECHO = '#!/bin/sh\necho "ran for $(cat "$INPUT_FILE_PATH")"\n'


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as mocked:
        yield mocked


@pytest.fixture
def egi(router: respx.MockRouter) -> FakeIssuer:
    issuer = FakeIssuer(EGI_ISSUER, router)
    for user in ("alice", "bob", "carol", "dave"):
        issuer.add_user(user, ALLOWED_VO)
    issuer.add_user("eve", OTHER_VO)  # a real EGI user, but of no VO this cluster admits
    return issuer


@pytest.fixture
def lab(router: respx.MockRouter) -> FakeIssuer:
    issuer = FakeIssuer(OTHER_ISSUER, router, keys=[rsa_key("lab-1")])
    issuer.add_user("lab-user", LAB_GROUP)
    return issuer


@pytest.fixture
def oidc_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "oidc_enable": True,
            "oidc_issuers": [EGI_ISSUER, OTHER_ISSUER],
            "oidc_groups": [ALLOWED_VO, LAB_GROUP],
            "users_admin": ["dave"],
            "oidc_client_id": "oscar-docs",
            "oscar_cors_origins": [DASHBOARD],
            "minio_access_key": "root-access",
            "minio_secret_key": "root-secret",
        }
    )


@pytest.fixture
async def api(oidc_settings: Settings, egi: FakeIssuer, lab: FakeIssuer) -> AsyncIterator[httpx.AsyncClient]:
    """The app with OIDC on, sending no credentials unless a request names some."""
    async with app_client(oidc_settings, auth=False) as http:
        yield http


def auth(value: str) -> dict[str, str]:
    return {"Authorization": value}


def user(issuer: FakeIssuer, subject: str, **claims: Any) -> dict[str, str]:
    return auth(f"Bearer {issuer.token(subject, **claims)}")


async def create(api: httpx.AsyncClient, headers: dict[str, str], name: str, **fields: Any) -> httpx.Response:
    return await api.post("/system/services", json=service_body(name, **fields), headers=headers)


class TestAdmission:
    async def test_user_in_an_allowed_vo(self, api: httpx.AsyncClient, egi: FakeIssuer) -> None:
        response = await api.get("/system/info", headers=user(egi, "alice"))
        assert response.status_code == 200
        assert response.json()["version"]

    async def test_user_of_another_issuer_by_group_membership(
        self, api: httpx.AsyncClient, lab: FakeIssuer
    ) -> None:
        assert (await api.get("/system/services", headers=user(lab, "lab-user"))).status_code == 200

    async def test_user_without_an_allowed_vo_is_403(self, api: httpx.AsyncClient, egi: FakeIssuer) -> None:
        response = await api.get("/system/services", headers=user(egi, "eve"))
        assert response.status_code == 403
        assert ALLOWED_VO in response.text

    async def test_basic_admin_still_works(self, api: httpx.AsyncClient) -> None:
        assert (await api.get("/system/services", headers=auth(ADMIN))).status_code == 200

    async def test_no_credentials_get_the_basic_challenge(self, api: httpx.AsyncClient) -> None:
        response = await api.get("/system/services")
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Basic")


def _expired(egi: FakeIssuer) -> str:
    return egi.token("alice", lifetime=-300)


def _not_yet_valid(egi: FakeIssuer) -> str:
    return egi.token("alice", nbf=int(time.time()) + 3600)


def _unknown_issuer(egi: FakeIssuer) -> str:
    return egi.token("alice", iss="https://evil.test/realms/egi")


def _wrong_signature(egi: FakeIssuer) -> str:
    return egi.token("alice", key=rsa_key("attacker"), kid="key-1")


def _alg_none(egi: FakeIssuer) -> str:
    claims = {"iss": EGI_ISSUER, "sub": "alice", "exp": int(time.time()) + 600}
    return unsigned(claims, {"alg": "none", "kid": "key-1"})


def _malformed(egi: FakeIssuer) -> str:
    return "not-a-jwt"


def _oversized(egi: FakeIssuer) -> str:
    return egi.token("alice", padding="p" * 10_000)


BAD_TOKENS: dict[str, Callable[[FakeIssuer], str]] = {
    "expired": _expired,
    "not yet valid": _not_yet_valid,
    "unknown issuer": _unknown_issuer,
    "wrong signature": _wrong_signature,
    "alg none": _alg_none,
    "malformed": _malformed,
    "oversized": _oversized,
}


class TestBadTokens:
    @pytest.mark.parametrize("kind", BAD_TOKENS)
    async def test_refused_with_401_before_asking_userinfo(
        self, api: httpx.AsyncClient, egi: FakeIssuer, kind: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        token = BAD_TOKENS[kind](egi)
        response = await api.get("/system/services", headers=auth(f"Bearer {token}"))
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert egi.userinfo.call_count == 0
        assert token not in caplog.text
        # Nor on the invocation routes.
        await create(api, auth(ADMIN), "svc")
        assert (
            await api.post("/job/svc", content=b"eA==", headers=auth(f"Bearer {token}"))
        ).status_code == 401

    async def test_discovery_down_is_503_and_admits_nobody(
        self, api: httpx.AsyncClient, egi: FakeIssuer
    ) -> None:
        egi.discovery.mock(side_effect=httpx.ConnectError("down"))
        response = await api.get("/system/services", headers=user(egi, "alice"))
        assert response.status_code == 503
        assert "discovery" in response.text
        assert response.headers["retry-after"] == "5"

    async def test_userinfo_down_is_503_and_admits_nobody(
        self, api: httpx.AsyncClient, egi: FakeIssuer
    ) -> None:
        egi.userinfo.mock(return_value=httpx.Response(500))
        assert (await api.get("/system/services", headers=user(egi, "alice"))).status_code == 503
        await create(api, auth(ADMIN), "svc", visibility="public")
        job = await api.post("/job/svc", content=b"eA==", headers=user(egi, "alice"))
        assert job.status_code == 503

    async def test_token_refused_by_userinfo_is_401(self, api: httpx.AsyncClient, egi: FakeIssuer) -> None:
        egi.userinfo.mock(return_value=httpx.Response(401))
        response = await api.get("/system/services", headers=user(egi, "alice"))
        assert response.status_code == 401


async def test_bearer_tokens_mean_nothing_with_oidc_off(
    client: httpx.AsyncClient, router: respx.MockRouter, egi: FakeIssuer
) -> None:
    response = await client.get("/system/services", headers=user(egi, "alice"), auth=None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    assert not router.calls


class TestVisibility:
    """Upstream ``TestMakeReadHandlerVisibility`` and the list/update/delete rules, with real tokens."""

    @pytest.fixture
    async def owned(self, api: httpx.AsyncClient, egi: FakeIssuer) -> None:
        alice = user(egi, "alice")
        assert (await create(api, alice, "priv", visibility="private")).status_code == 201
        assert (await create(api, alice, "pub", visibility="public")).status_code == 201
        created = await create(api, alice, "restr", visibility="restricted", allowed_users=["bob"])
        assert created.status_code == 201
        assert (await create(api, auth(ADMIN), "adminsvc")).status_code == 201

    @pytest.mark.usefixtures("owned")
    async def test_owner_is_the_subject(self, api: httpx.AsyncClient, egi: FakeIssuer) -> None:
        service = (await api.get("/system/services/priv", headers=user(egi, "alice"))).json()
        assert service["owner"] == "alice"
        admins = (await api.get("/system/services/adminsvc", headers=auth(ADMIN))).json()
        assert admins["owner"] == "cluster_admin"

    async def test_buckets_carry_their_services_owner(self, api: httpx.AsyncClient, egi: FakeIssuer) -> None:
        """As upstream tags a service's buckets (``owner``, ``from_service``, ``owner_name``): a user's
        service's bucket lists its owner, the admin's lists ``""`` with ``owner_name: oscar``."""
        inputs = [{"storage_provider": "minio.default", "path": "alices/in"}]
        assert (await create(api, user(egi, "alice"), "mine", input=inputs)).status_code == 201
        inputs = [{"storage_provider": "minio.default", "path": "admins/in"}]
        assert (await create(api, auth(ADMIN), "theirs", input=inputs)).status_code == 201
        listed = {b["bucket_name"]: b for b in (await api.get("/system/buckets", headers=auth(ADMIN))).json()}
        assert (listed["alices"]["owner"], listed["alices"]["metadata"]) == (
            "alice",
            {"from_service": "mine"},
        )
        assert (listed["admins"]["owner"], listed["admins"]["metadata"]) == (
            "",
            {"from_service": "theirs", "owner_name": "oscar"},
        )
        one = (await api.get("/system/buckets/alices", headers=auth(ADMIN))).json()
        assert (one["owner"], one["metadata"]) == ("alice", {"owner": "alice", "from_service": "mine"})

    @pytest.mark.usefixtures("owned")
    async def test_read_matrix(self, api: httpx.AsyncClient, egi: FakeIssuer) -> None:
        expected = {
            "alice": {"priv": 200, "pub": 200, "restr": 200, "adminsvc": 403},
            "bob": {"priv": 403, "pub": 200, "restr": 200, "adminsvc": 403},
            "carol": {"priv": 403, "pub": 200, "restr": 403, "adminsvc": 403},
            # USERS_ADMIN unlocks cluster logs and status upstream, never other users' services.
            "dave": {"priv": 403, "pub": 200, "restr": 403, "adminsvc": 403},
        }
        seen = {
            name: {
                svc: (await api.get(f"/system/services/{svc}", headers=user(egi, name))).status_code
                for svc in row
            }
            for name, row in expected.items()
        }
        assert seen == expected
        for svc in ("priv", "pub", "restr", "adminsvc"):
            assert (await api.get(f"/system/services/{svc}", headers=auth(ADMIN))).status_code == 200
        assert (await api.get("/system/services/ghost", headers=user(egi, "bob"))).status_code == 404

    @pytest.mark.usefixtures("owned")
    async def test_lists_are_filtered(self, api: httpx.AsyncClient, egi: FakeIssuer) -> None:
        async def listed(headers: dict[str, str]) -> set[str]:
            response = await api.get("/system/services", headers=headers)
            assert response.status_code == 200
            return {service["name"] for service in response.json()}

        assert await listed(user(egi, "alice")) == {"priv", "pub", "restr"}
        assert await listed(user(egi, "bob")) == {"pub", "restr"}
        assert await listed(user(egi, "carol")) == {"pub"}
        assert await listed(auth(ADMIN)) == {"priv", "pub", "restr", "adminsvc"}

    @pytest.mark.usefixtures("owned")
    async def test_only_the_owner_or_admin_updates(self, api: httpx.AsyncClient, egi: FakeIssuer) -> None:
        for svc in ("pub", "restr"):
            body = service_body(svc, memory="1Gi", visibility="public")
            refused = await api.put("/system/services", json=body, headers=user(egi, "bob"))
            assert refused.status_code == 403
        stored = (await api.get("/system/services/restr", headers=user(egi, "alice"))).json()
        assert (stored["memory"], stored["visibility"]) == ("256Mi", "restricted")

        body = service_body("priv", memory="2Gi", visibility="private")
        assert (await api.put("/system/services", json=body, headers=user(egi, "alice"))).status_code == 204
        stored = (await api.get("/system/services/priv", headers=user(egi, "alice"))).json()
        assert (stored["memory"], stored["owner"]) == ("2Gi", "alice")

        body = service_body("restr", memory="3Gi", visibility="restricted", allowed_users=["bob"])
        assert (await api.put("/system/services", json=body, headers=auth(ADMIN))).status_code == 204
        stored = (await api.get("/system/services/restr", headers=user(egi, "bob"))).json()
        assert (stored["memory"], stored["owner"]) == ("3Gi", "alice")

    @pytest.mark.usefixtures("owned")
    async def test_only_the_owner_or_admin_deletes(self, api: httpx.AsyncClient, egi: FakeIssuer) -> None:
        for svc in ("pub", "restr"):
            assert (await api.delete(f"/system/services/{svc}", headers=user(egi, "bob"))).status_code == 403
        assert (await api.delete("/system/services/priv", headers=user(egi, "dave"))).status_code == 403
        assert (await api.delete("/system/services/adminsvc", headers=user(egi, "alice"))).status_code == 403
        assert (await api.delete("/system/services/priv", headers=user(egi, "alice"))).status_code == 204
        assert (await api.delete("/system/services/restr", headers=auth(ADMIN))).status_code == 204
        remaining = await api.get("/system/services", headers=auth(ADMIN))
        assert {service["name"] for service in remaining.json()} == {"pub", "adminsvc"}


class TestBuckets:
    """A user's service may not use a bucket another owner's service made (``test_bucket_access.py`` has
    the rest of buckets' ownership)."""

    async def test_no_service_on_another_users_bucket(self, api: httpx.AsyncClient, egi: FakeIssuer) -> None:
        alice, bob = user(egi, "alice"), user(egi, "bob")
        inputs = [{"storage_provider": "minio.default", "path": "alice-data/in"}]
        assert (await create(api, alice, "reader", input=inputs)).status_code == 201
        # Reading her inputs, or writing into her bucket, are both refused.
        stolen = [{"storage_provider": "minio", "path": "alice-data/in"}]
        assert (await create(api, bob, "thief", input=stolen)).status_code == 403
        response = await create(
            api, bob, "writer", output=[{"storage_provider": "minio", "path": "alice-data/x"}]
        )
        assert response.status_code == 403
        assert "alice-data" in response.text
        # Nor by updating a service of one's own towards it.
        assert (await create(api, bob, "mine")).status_code == 201
        moved = await api.put("/system/services", json=service_body("mine", input=stolen), headers=bob)
        assert moved.status_code == 403
        # Her own second service on the same bucket is fine, and so is the admin's.
        assert (
            await create(
                api, alice, "reader2", output=[{"storage_provider": "minio", "path": "alice-data/out"}]
            )
        ).status_code == 201
        assert (await create(api, auth(ADMIN), "audit", input=stolen)).status_code == 201
        # The admin's service now uses it too: it is no longer only hers to add services on.
        assert (await create(api, alice, "reader3", input=inputs)).status_code == 403


class TestVO:
    async def stored_vo(self, api: httpx.AsyncClient, name: str) -> str:
        vo: str = (await api.get(f"/system/services/{name}", headers=auth(ADMIN))).json()["vo"]
        return vo

    async def test_named_vo_of_the_user(self, api: httpx.AsyncClient, egi: FakeIssuer) -> None:
        assert (await create(api, user(egi, "alice"), "svc", vo=ALLOWED_VO)).status_code == 201
        assert await self.stored_vo(api, "svc") == ALLOWED_VO

    @pytest.mark.parametrize("vo", [OTHER_VO, LAB_GROUP])
    async def test_vo_the_user_is_not_in(self, api: httpx.AsyncClient, egi: FakeIssuer, vo: str) -> None:
        response = await create(api, user(egi, "alice"), "svc", vo=vo)
        assert response.status_code == 400
        assert "not enrolled" in response.text
        assert (await api.get("/system/services/svc", headers=auth(ADMIN))).status_code == 404

    async def test_no_vo_takes_the_first_allowed_group_of_the_user(
        self, api: httpx.AsyncClient, egi: FakeIssuer, lab: FakeIssuer
    ) -> None:
        assert (await create(api, user(egi, "alice"), "egi-svc")).status_code == 201
        assert await self.stored_vo(api, "egi-svc") == ALLOWED_VO
        assert (await create(api, user(lab, "lab-user"), "lab-svc")).status_code == 201
        assert await self.stored_vo(api, "lab-svc") == LAB_GROUP

    async def test_update_keeps_or_checks_the_vo(self, api: httpx.AsyncClient, egi: FakeIssuer) -> None:
        alice = user(egi, "alice")
        assert (await create(api, alice, "svc", vo=ALLOWED_VO)).status_code == 201
        changed = await api.put("/system/services", json=service_body("svc", vo=OTHER_VO), headers=alice)
        assert changed.status_code == 400
        assert await self.stored_vo(api, "svc") == ALLOWED_VO
        kept = await api.put("/system/services", json=service_body("svc", memory="1Gi"), headers=alice)
        assert kept.status_code == 204
        assert await self.stored_vo(api, "svc") == ALLOWED_VO

    async def test_admin_names_any_vo(self, api: httpx.AsyncClient) -> None:
        assert (await create(api, auth(ADMIN), "svc", vo="vo.anything.eu")).status_code == 201
        assert await self.stored_vo(api, "svc") == "vo.anything.eu"


class TestInvocations:
    """/job and /run: the service's token, a user allowed on the service, or the admin (oscar-api.md §6
    items 5, 6 and 8 as they apply)."""

    @pytest.fixture
    async def token(self, api: httpx.AsyncClient, egi: FakeIssuer) -> str:
        alice = user(egi, "alice")
        assert (await create(api, alice, "priv", script=ECHO)).status_code == 201
        assert (await create(api, alice, "pub", script=ECHO, visibility="public")).status_code == 201
        value: str = (await api.get("/system/services/priv", headers=alice)).json()["token"]
        return value

    async def test_job(self, api: httpx.AsyncClient, egi: FakeIssuer, token: str) -> None:
        body = base64.b64encode(b"x")
        cases = [
            (auth(f"Bearer {token}"), 201),  # the service's own token
            (user(egi, "alice"), 201),  # its owner
            (auth(ADMIN), 201),  # the admin (our documented addition)
            (user(egi, "bob"), 403),  # admitted on the cluster, but not allowed on a private service
            (user(egi, "eve"), 403),  # not admitted on the cluster at all
            (auth("Bearer " + "0" * 64), 401),  # a wrong service token
            (user(egi, "alice", lifetime=-300), 401),
            ({}, 401),
        ]
        seen = [
            (await api.post("/job/priv", content=body, headers=headers)).status_code for headers, _ in cases
        ]
        assert seen == [status for _, status in cases]

    async def test_refused_job_records_nothing(
        self, api: httpx.AsyncClient, egi: FakeIssuer, token: str
    ) -> None:
        await api.post("/job/priv", content=base64.b64encode(b"x"), headers=user(egi, "bob"))
        assert (await api.get("/system/logs/priv", headers=user(egi, "alice"))).json()["jobs"] == {}

    async def test_run_by_a_user_allowed_on_a_public_service(
        self, api: httpx.AsyncClient, egi: FakeIssuer, token: str
    ) -> None:
        response = await api.post("/run/pub", content=base64.b64encode(b"bob"), headers=user(egi, "bob"))
        assert response.status_code == 200, response.text
        assert "ran for bob" in response.text

    async def test_run_refusals(self, api: httpx.AsyncClient, egi: FakeIssuer, token: str) -> None:
        body = base64.b64encode(b"x")
        assert (await api.post("/run/priv", content=body, headers=user(egi, "bob"))).status_code == 403
        assert (await api.post("/run/priv", content=body)).status_code == 401
        assert (
            await api.post("/run/priv", content=body, headers=auth("Bearer " + "f" * 64))
        ).status_code == 401
        ok = await api.post("/run/priv", content=body, headers=auth(f"Bearer {token}"))
        assert ok.status_code == 200
        assert "ran for x" in ok.text


async def finished_jobs(api: httpx.AsyncClient, service: str, *, count: int) -> dict[str, dict[str, Any]]:
    """The service's jobs as the admin sees them, once ``count`` of them have finished."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        jobs: dict[str, dict[str, Any]] = (
            await api.get(f"/system/logs/{service}", headers=auth(ADMIN))
        ).json()["jobs"]
        if len(jobs) >= count and all(job["status"] in ("Succeeded", "Failed") for job in jobs.values()):
            return jobs
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} finished jobs of {service}")


class TestJobs:
    """A service's jobs: all of them for its owner and the admin; for other users allowed on the service,
    the ones they started (upstream lists by the ``oscar.grycap/job-owner`` label)."""

    @pytest.fixture
    async def started(self, api: httpx.AsyncClient, egi: FakeIssuer) -> dict[str, str]:
        alice = user(egi, "alice")
        assert (await create(api, alice, "pub", script=ECHO, visibility="public")).status_code == 201
        assert (await create(api, alice, "priv", script=ECHO)).status_code == 201
        token = (await api.get("/system/services/pub", headers=alice)).json()["token"]
        ids = {}
        for who, headers in (("alice", alice), ("bob", user(egi, "bob")), ("token", auth(f"Bearer {token}"))):
            response = await api.post("/job/pub", content=base64.b64encode(who.encode()), headers=headers)
            assert response.status_code == 201
            ids[who] = response.headers["x-oscar-job-ids"]
        await finished_jobs(api, "pub", count=3)
        return ids

    async def listed(self, api: httpx.AsyncClient, headers: dict[str, str], service: str = "pub") -> set[str]:
        response = await api.get(f"/system/logs/{service}", headers=headers)
        assert response.status_code == 200, response.text
        return set(response.json()["jobs"])

    async def test_who_lists_what(
        self, api: httpx.AsyncClient, egi: FakeIssuer, started: dict[str, str]
    ) -> None:
        assert await self.listed(api, user(egi, "alice")) == set(started.values())
        assert await self.listed(api, auth(ADMIN)) == set(started.values())
        assert await self.listed(api, user(egi, "bob")) == {started["bob"]}
        assert await self.listed(api, user(egi, "carol")) == set()
        assert (await api.get("/system/logs/priv", headers=user(egi, "bob"))).status_code == 403

    async def test_logs_of_ones_own_jobs_only(
        self, api: httpx.AsyncClient, egi: FakeIssuer, started: dict[str, str]
    ) -> None:
        bob = user(egi, "bob")
        own = await api.get(f"/system/logs/pub/{started['bob']}", headers=bob)
        assert own.status_code == 200
        assert "ran for bob" in own.text
        for other in ("alice", "token"):
            assert (await api.get(f"/system/logs/pub/{started[other]}", headers=bob)).status_code == 404
            assert (await api.delete(f"/system/logs/pub/{started[other]}", headers=bob)).status_code == 404
        alices = await api.get(f"/system/logs/pub/{started['bob']}", headers=user(egi, "alice"))
        assert "ran for bob" in alices.text

    async def test_deleting_ones_own_jobs(
        self, api: httpx.AsyncClient, egi: FakeIssuer, started: dict[str, str]
    ) -> None:
        assert (
            await api.delete("/system/logs/pub", params={"all": "true"}, headers=user(egi, "bob"))
        ).status_code == 204
        assert await self.listed(api, auth(ADMIN)) == {started["alice"], started["token"]}
        assert (
            await api.delete(f"/system/logs/pub/{started['token']}", headers=user(egi, "alice"))
        ).status_code == 204
        assert await self.listed(api, auth(ADMIN)) == {started["alice"]}

    async def test_idempotency_keys_are_per_user(self, api: httpx.AsyncClient, egi: FakeIssuer) -> None:
        assert (
            await create(api, user(egi, "alice"), "pub", script=ECHO, visibility="public")
        ).status_code == 201
        ids = []
        for name in ("bob", "carol", "bob"):
            response = await api.post(
                "/job/pub", content=b"eA==", headers={**user(egi, name), "Idempotency-Key": "same"}
            )
            ids.append(response.headers["x-oscar-job-ids"])
        assert ids[0] == ids[2]  # bob's retry is the same job
        assert ids[0] != ids[1]  # carol's request with the same key is hers


class TestClusterWide:
    async def test_config_shows_root_keys_to_the_admin_only(
        self, api: httpx.AsyncClient, egi: FakeIssuer
    ) -> None:
        admin = (await api.get("/system/config", headers=auth(ADMIN))).json()["minio_provider"]
        assert (admin["access_key"], admin["secret_key"]) == ("root-access", "root-secret")
        for name in ("alice", "dave"):
            mine = (await api.get("/system/config", headers=user(egi, name))).json()
            assert (mine["minio_provider"]["access_key"], mine["minio_provider"]["secret_key"]) == ("", "")
            assert mine["config"]["oidc_groups"] == [ALLOWED_VO, LAB_GROUP]


class TestCors:
    async def test_preflight_from_the_dashboard(self, api: httpx.AsyncClient) -> None:
        response = await api.options(
            "/system/services",
            headers={
                "Origin": DASHBOARD,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == DASHBOARD
        assert response.headers["access-control-allow-credentials"] == "true"
        allowed = response.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed
        assert "content-type" in allowed
        assert "POST" in response.headers["access-control-allow-methods"]

    async def test_preflight_from_elsewhere(self, api: httpx.AsyncClient) -> None:
        response = await api.options(
            "/system/services",
            headers={"Origin": "https://evil.test", "Access-Control-Request-Method": "GET"},
        )
        assert response.status_code == 400
        assert "access-control-allow-origin" not in response.headers

    async def test_actual_request_with_a_bearer_token(self, api: httpx.AsyncClient, egi: FakeIssuer) -> None:
        response = await api.get("/system/services", headers={"Origin": DASHBOARD, **user(egi, "alice")})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == DASHBOARD
        # Errors carry the header too, so the dashboard can read why it was refused.
        refused = await api.get("/system/services", headers={"Origin": DASHBOARD, **user(egi, "eve")})
        assert refused.status_code == 403
        assert refused.headers["access-control-allow-origin"] == DASHBOARD

    async def test_no_cors_unless_configured(self, client: httpx.AsyncClient) -> None:
        response = await client.options(
            "/system/services", headers={"Origin": DASHBOARD, "Access-Control-Request-Method": "GET"}
        )
        assert "access-control-allow-origin" not in response.headers
        assert (
            "access-control-allow-origin"
            not in (await client.get("/system/services", headers={"Origin": DASHBOARD})).headers
        )


async def test_storage_credentials_of_a_public_service_are_its_owners_only(
    api: httpx.AsyncClient, egi: FakeIssuer
) -> None:
    providers = {"s3": {"aws": {"access_key": "AKIA", "secret_key": "alices-secret", "region": "eu-west-1"}}}
    alice, bob = user(egi, "alice"), user(egi, "bob")
    outputs = [{"storage_provider": "s3.aws", "path": "alice-results/out"}]
    created = await create(
        api, alice, "shared-creds", visibility="public", storage_providers=providers, output=outputs
    )
    assert created.status_code == 201, created.text

    as_bob = (await api.get("/system/services/shared-creds", headers=bob)).json()
    assert as_bob["storage_providers"]["s3"]["aws"]["secret_key"] == ""
    listed = (await api.get("/system/services", headers=bob)).json()
    assert "alices-secret" not in str(listed)
    as_alice = (await api.get("/system/services/shared-creds", headers=alice)).json()
    assert as_alice["storage_providers"]["s3"]["aws"]["secret_key"] == "alices-secret"
    as_admin = (await api.get("/system/services/shared-creds", headers=auth(ADMIN))).json()
    assert as_admin["storage_providers"]["s3"]["aws"]["secret_key"] == "alices-secret"
