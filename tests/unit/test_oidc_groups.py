"""Claims to groups, per issuer kind, as upstream's ``getGroupsEGI`` / ``getGroupsKeycloak``."""

from __future__ import annotations

from typing import Any

import pytest

from oscar_manager.auth.groups import groups_from_claims, realm

EGI = "https://aai.egi.eu/auth/realms/egi"
AI4EOSC = "https://iam.cloud.ai4eosc.eu/auth/realms/ai4eosc/"
KEYCLOAK = "https://keycloak.grycap.net/realms/grycap"


@pytest.mark.parametrize(
    ("issuer", "expected"),
    [
        (EGI, "egi"),
        (AI4EOSC, "ai4eosc"),
        ("https://aai.egi.eu/auth/realms/egi-dev", "egi-dev"),
        ("https://accounts.example.org", ""),
        ("https://x.test/realms", ""),
    ],
)
def test_realm(issuer: str, expected: str) -> None:
    assert realm(issuer) == expected


def test_egi_entitlements_give_the_vo() -> None:
    claims = {
        "entitlements": [
            "urn:mace:egi.eu:group:vo.access.egi.eu:role=member#aai.egi.eu",
            " URN:MACE:EGI.EU:GROUP:VO.AI4EOSC.EU:role=vm_operator#aai.egi.eu ",
            "urn:mace:egi.eu:group:vo.access.egi.eu:role=owner#aai.egi.eu",  # same VO again
            "urn:mace:egi.eu:group:demo.fedcloud.egi.eu:sub:role=member#aai.egi.eu",
            "urn:mace:egi.eu:groupie:vo.fake.eu:role=member#aai.egi.eu",  # not the group namespace
            "urn:mace:example.org:group:vo.else.eu:role=member",
            "urn:mace:egi.eu:group:",  # no VO at all
            42,
        ]
    }
    assert groups_from_claims(EGI, claims) == ["vo.access.egi.eu", "vo.ai4eosc.eu", "demo.fedcloud.egi.eu"]


def test_egi_older_claim_name_and_both_together() -> None:
    old = "urn:mace:egi.eu:group:vo.old.eu:role=member#aai.egi.eu"
    new = "urn:mace:egi.eu:group:vo.new.eu:role=member#aai.egi.eu"
    assert groups_from_claims(EGI, {"eduperson_entitlement": [old]}) == ["vo.old.eu"]
    assert groups_from_claims(EGI, {"entitlements": [new], "eduperson_entitlement": [old, new]}) == [
        "vo.new.eu",
        "vo.old.eu",
    ]
    # A single entitlement sent as a string rather than a list still counts.
    assert groups_from_claims(EGI, {"entitlements": new}) == ["vo.new.eu"]


def test_egi_realm_ignores_other_claims() -> None:
    assert groups_from_claims(EGI, {"group_membership": ["vo.x"], "realm_access": {"roles": ["vo.y"]}}) == []


def test_ai4eosc_realm_roles() -> None:
    claims: dict[str, Any] = {
        "realm_access": {"roles": ["platform-access:vo.ai4eosc.eu", "offline_access"]},
        "group_membership": ["/ignored"],
    }
    assert groups_from_claims(AI4EOSC, claims) == ["platform-access:vo.ai4eosc.eu", "offline_access"]
    assert groups_from_claims(AI4EOSC, {"realm_access": "not an object"}) == []


def test_other_issuers_group_membership() -> None:
    assert groups_from_claims(KEYCLOAK, {"group_membership": ["/oscar", "/oscar/admins"]}) == [
        "/oscar",
        "/oscar/admins",
    ]
    # Entitlements mean nothing outside EGI's realm.
    entitlement = "urn:mace:egi.eu:group:vo.access.egi.eu:role=member#aai.egi.eu"
    assert groups_from_claims(KEYCLOAK, {"entitlements": [entitlement]}) == []
    assert groups_from_claims(KEYCLOAK, {}) == []
