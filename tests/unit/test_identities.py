"""Which MinIO access key an OIDC subject gets, and sealing secrets at rest."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from oscar_manager.auth.sealing import Sealer, UnsealError
from oscar_manager.domain.identities import DERIVED_PREFIX, minio_access_key

EGI_SUBJECT = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef@egi.eu"


def test_a_subject_minio_takes_is_its_own_access_key_as_upstream() -> None:
    assert minio_access_key(EGI_SUBJECT, reserved="root") == EGI_SUBJECT
    assert minio_access_key("alice", reserved="root") == "alice"


@pytest.mark.parametrize(
    "subject",
    ["a=b", "a,b", "ab", "with/slash", "x" * 129, "ünïcode", "root", DERIVED_PREFIX + "deadbeef"],
)
def test_other_subjects_get_a_stable_derived_key(subject: str) -> None:
    key = minio_access_key(subject, reserved="root")
    assert key.startswith(DERIVED_PREFIX)
    assert len(key) == len(DERIVED_PREFIX) + 32
    assert key == minio_access_key(subject, reserved="root")
    assert key != minio_access_key(subject + "x", reserved="root")


def test_a_sealed_secret_opens_only_with_its_key(tmp_path: Path) -> None:
    made = Sealer.from_settings("", tmp_path / "data" / "credentials-key")
    sealed = made.seal("s3cr3t")
    assert b"s3cr3t" not in sealed
    assert Sealer.from_settings("", tmp_path / "data" / "credentials-key").unseal(sealed) == "s3cr3t"
    with pytest.raises(UnsealError, match="OSCAR_CREDENTIALS_KEY"):
        Sealer(Fernet.generate_key().decode()).unseal(sealed)
    with pytest.raises(ValueError, match="OSCAR_CREDENTIALS_KEY"):
        Sealer("not a key")
