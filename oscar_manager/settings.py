"""Every setting of the manager, read once from the environment.

Upstream OSCAR's variable names are kept where they exist (``OSCAR_USERNAME``, ``MINIO_ENDPOINT``,
``OIDC_ISSUERS``, ``TTL_JOB`` ...), so an existing deployment's environment carries over. Our own
additions are prefixed ``OSCAR_``. With nothing set the manager runs on its embedded default: SQLite under
the data directory, local storage and the local executor.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]
# The generated presign key's size, and the least a given one may have.
PRESIGN_KEY_BYTES = 32
_HOST_NAME = re.compile(r"(?i)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")


class BackendKind(StrEnum):
    LOCAL = "local"
    KUBERNETES = "kubernetes"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", populate_by_name=True)

    # --- the HTTP server -------------------------------------------------------------------------
    oscar_username: str = "oscar"
    # Empty means: generate one on first start and keep it in the data directory.
    oscar_password: str = ""
    oscar_host: str = "127.0.0.1"
    oscar_service_port: int = Field(default=8080, ge=1, le=65535)
    # Seconds requests in flight get to finish after SIGTERM (new connections are refused at once) before
    # they are cut and the manager shuts down. Kubernetes' terminationGracePeriodSeconds must exceed it.
    oscar_graceful_shutdown_timeout: int = Field(default=25, ge=1)
    read_timeout: int = Field(default=300, gt=0)
    write_timeout: int = Field(default=300, gt=0)
    # Bodies parsed in memory (service definitions, events) are refused above this size with 413.
    oscar_max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    # The S3 face of the local buckets (embedded default only: off with MINIO_ENDPOINT): a port of its own
    # on OSCAR_HOST, because S3 clients put the bucket first in the path. 0 turns it off.
    oscar_s3_port: int = Field(default=9000, ge=0, le=65535)
    # The S3 endpoint as clients reach it (``/system/config``'s ``minio_provider.endpoint``), e.g. behind a
    # proxy; empty: the host the client called the manager by, on OSCAR_S3_PORT.
    oscar_s3_public_url: str = ""

    # --- identity of this deployment (as upstream) -----------------------------------------------
    oscar_name: str = "oscar"
    oscar_namespace: str = "oscar"
    oscar_services_namespace: str = "oscar-svc"
    oscar_controller_service_account: str = "oscar-sa"

    # --- our own ---------------------------------------------------------------------------------
    oscar_data_dir: Path = Path("oscar-data")
    # Empty means: SQLite file ``oscar.db`` inside the data directory.
    oscar_database_url: str = ""
    oscar_backend: BackendKind = BackendKind.LOCAL
    oscar_git_commit: str = ""
    # The key signing the local buckets' presigned URLs (hex, at least 32 bytes). Empty: generated once into
    # the data directory. Replicas serving the same buckets need the same one (each accepts the others' URLs).
    oscar_presign_key: str = ""
    # Bodies of /run (base64 files) may be larger than definitions: they have their own limit.
    oscar_max_run_body_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    # The largest sync /run answer (before base64), checked from the outputs' sizes before any is read; a
    # larger one is a 500 ResponseTooLarge (the outputs are still uploaded to the output bucket).
    oscar_max_run_response_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    # How long a sync /run may take before the caller gets 504 (and the run is killed).
    oscar_run_timeout: float = Field(default=300, gt=0)

    # --- execution and the event intake ----------------------------------------------------------
    # False: record events and acknowledge them, but run nothing (maintenance); they run once it is true.
    oscar_dispatch: bool = True
    # After this many failed submissions an event is marked failed (visible, not retried).
    oscar_dispatch_max_attempts: int = Field(default=8, ge=1)
    oscar_dispatch_interval: float = Field(default=1.0, gt=0)
    # Several managers on one PostgreSQL: a claimed event is this replica's for this long (seconds),
    # renewed every third of it while the replica lives; the claims of one that died go back to the queue
    # once lapsed. And how often each replica tries to lead (or the leader checks it still does).
    oscar_claim_lease: float = Field(default=30.0, ge=1)
    oscar_leader_interval: float = Field(default=1.0, gt=0)
    # Local executor: jobs at once, and the longest a job may run.
    oscar_local_concurrency: int = Field(default=4, ge=1)
    oscar_job_timeout: float = Field(default=3600, gt=0)
    # Seconds the manager waits to connect to a service's own storage provider (minio.<id>, s3.<id>) and
    # for each of its answers, before the operation fails (botocore retries it twice): a provider that
    # never answers fails its job before the job's own timeout, naming the provider.
    oscar_provider_timeout: float = Field(default=30, gt=0)
    # Refuse to start the local executor without bubblewrap (instead of running scripts unsandboxed).
    oscar_require_sandbox: bool = False
    # Without a working bubblewrap, scripts are refused (jobs fail, /run answers 503) unless this is true:
    # they would run as the manager's user (or nobody, as root) next to other jobs and the data directory.
    oscar_allow_unsandboxed: bool = False
    # Local jobs: processes and threads at once (the job's pids cgroup), and the disk its folder may use
    # (inputs, outputs and anything the script writes there; each file also by RLIMIT_FSIZE).
    oscar_job_max_pids: int = Field(default=1024, ge=1)
    oscar_job_disk_bytes: int = Field(default=10 * 1024**3, gt=0)
    # Local jobs run in their service's image: "pull" always (a job fails when its image cannot be had),
    # "host" never (scripts run with this machine's tools), "auto" when the image's registry can be reached
    # (else this machine's tools, said in the job's log and /system/info).
    oscar_local_images: Literal["auto", "pull", "host"] = "auto"
    # The image cache: its bound in bytes (layers and unpacked roots; least recently used images go first),
    # and its folder. Empty: ``images`` in the data directory, or, when the manager runs as root and scripts
    # as ``nobody`` (who cannot reach into the private data directory), /var/cache/oscar-manager.
    oscar_image_cache_bytes: int = Field(default=20 * 1024**3, gt=0)
    oscar_image_dir: Path | None = None
    # Seconds for each answer of a registry (the job's own time limit bounds the whole pull).
    oscar_image_pull_timeout: float = Field(default=60, gt=0)
    # Registry credentials for every service, as Docker's config.json ({"auths": {host: {"auth": ...}}}),
    # and a folder of such files named as the services' ``image_pull_secrets`` (the content of a
    # kubernetes.io/dockerconfigjson Secret, file named as the Secret).
    oscar_registry_auth_file: Path | None = None
    oscar_image_pull_secrets_dir: Path | None = None
    # Registries reached over plain HTTP (host[:port]); loopback addresses always are, as with Docker.
    oscar_insecure_registries: CommaList = Field(default_factory=list)
    # At start, pull the images of the existing services (in the background; jobs wait for their own).
    oscar_image_prepull: bool = False

    # --- Kubernetes (OSCAR_BACKEND=kubernetes) --------------------------------------------------
    # Empty: the pod's service account in a cluster, else $KUBECONFIG or ~/.kube/config.
    oscar_kubeconfig: Path | None = None
    # The image jobs take the supervisor executable from (the manager's own image).
    oscar_manager_image: str = "oscar-manager:latest"
    # Job creations in flight at once.
    oscar_kubernetes_concurrency: int = Field(default=64, ge=1)
    # Job creations a second at most, in bursts of up to a second's worth; 0: no limit (the default).
    oscar_kubernetes_rate: float = Field(default=0, ge=0)
    # Exposed services: an Ingress (ingress-nginx) per service as well, for traffic that bypasses the
    # manager's proxy (off: the manager proxies it all); on INGRESS_HOST (upstream's name) when set.
    oscar_exposed_ingress: bool = False
    ingress_host: str = ""
    # Where the proxy reaches an exposed service's instances: the Service's cluster DNS name ("service",
    # for a manager in the cluster), a ready pod's address ("pods", for one outside it), or "auto": the
    # former when the manager runs in the cluster it talks to.
    oscar_exposed_endpoints: Literal["auto", "service", "pods"] = "auto"
    # Warm pods of sync services (``backends.warm_scaling``): at most this many per service whose
    # ``max_scale`` is 0; pods above ``min_scale`` (0 with the ``oscar-manager/warm`` annotation) go once
    # idle this long.
    oscar_warm_max_pods: int = Field(default=10, ge=1)
    oscar_warm_idle_seconds: float = Field(default=300, gt=0)

    # --- MinIO (the ``minio.default`` storage provider) ------------------------------------------
    minio_endpoint: str = ""
    minio_access_key: str = ""
    minio_secret_key: str = ""
    minio_region: str = "us-east-1"
    minio_tls_verify: bool = True
    # How uploads to input folders reach the manager (both may be on; the intake drops duplicates):
    # the manager's own ListenBucketNotification streams (nothing to configure in MinIO) ...
    oscar_minio_listen: bool = True
    # ... and/or MinIO's webhook target posting to ``<this URL>/events/minio``: the manager's base URL as
    # MinIO reaches it (e.g. http://oscar.oscar:8080). Empty: no webhook.
    oscar_minio_webhook_url: str = ""
    # The webhook target's name in MinIO (ARN ``arn:minio:sqs::<name>:webhook``). If MinIO lacks it, the
    # manager registers it with the admin API and restarts MinIO once (not per service).
    oscar_minio_webhook_target: str = "OSCAR"
    # ... or MinIO's Kafka target (``kafka``): MinIO publishes the notifications to a Kafka topic that the
    # manager consumes, for a broker between storage and manager. The brokers as both reach them
    # (host:port, comma-separated); the target is registered in MinIO (restarting it once) if missing.
    oscar_minio_notify: Literal["", "kafka"] = ""
    oscar_minio_kafka_brokers: str = ""
    oscar_minio_kafka_topic: str = "oscar-minio-events"
    oscar_minio_kafka_target: str = "OSCAR"
    oscar_minio_kafka_group: str = "oscar-manager-minio"
    # The Bearer token MinIO sends; empty: generated once and kept in the data directory.
    oscar_minio_webhook_token: str = ""
    # With OIDC on, every user gets a MinIO user of their own (keys in ``/system/config``), made through
    # MinIO's admin API on their first request. Off for an S3 server that is no MinIO (no admin API):
    # users then get no keys.
    oscar_minio_users: bool = True
    # Seconds a user's MinIO identity is trusted before the next request checks it again (re-created if
    # it was deleted); ``/system/config``, which hands the keys out, always checks.
    oscar_minio_user_check_interval: float = Field(default=60, ge=0)
    # The key sealing users' MinIO secrets in the registry (a Fernet key: 32 bytes, url-safe base64).
    # Empty: generated once into the data directory. Replicas sharing a database need the same one.
    oscar_credentials_key: str = ""
    # Input folders are listed again this often (seconds; 0: only at start and on reconnect), a safety
    # net for deliveries MinIO dropped (it keeps no queue for a webhook target unless told to).
    oscar_reconcile_interval: float = Field(default=300, ge=0)

    # --- storage providers declared by services --------------------------------------------------
    # Networks (CIDR or single addresses) and host names that a service's own ``minio.<id>``/``s3.<id>``
    # endpoints (and ``kafka.<id>`` bootstrap servers) may make the manager connect to in spite of the
    # rule refusing loopback, link-local, unspecified and the host's own addresses (``storage/egress.py``).
    # Empty: no exceptions.
    oscar_provider_allowed_networks: CommaList = Field(default_factory=list)

    # --- OIDC ------------------------------------------------------------------------------------
    oidc_enable: bool = False
    oidc_issuers: CommaList = Field(default_factory=list)
    oidc_subject: str = ""
    oidc_groups: CommaList = Field(default_factory=list)
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    users_admin: CommaList = Field(default_factory=list)
    # Our own OIDC knobs. Seconds an issuer may take to answer; seconds a token's groups (from userinfo)
    # are trusted before asking again; the least seconds between two key-set fetches caused by an unknown
    # ``kid``; the longest token accepted.
    oscar_oidc_timeout: float = Field(default=10, gt=0)
    oscar_oidc_userinfo_ttl: float = Field(default=60, ge=0)
    oscar_oidc_jwks_refresh_interval: float = Field(default=60, ge=0)
    oscar_oidc_max_token_bytes: int = Field(default=8192, gt=0)
    # Origins allowed to call the API from a browser (the hosted OSCAR dashboard sends bearer tokens
    # cross-origin). Empty: no CORS headers at all.
    oscar_cors_origins: CommaList = Field(default_factory=list)

    # --- jobs ------------------------------------------------------------------------------------
    ttl_job: int = Field(default=2_592_000, ge=0)
    job_listing_limit: int = Field(default=70, gt=0)

    @field_validator(
        "oidc_issuers",
        "oidc_groups",
        "users_admin",
        "oscar_cors_origins",
        "oscar_provider_allowed_networks",
        "oscar_insecure_registries",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("oscar_s3_port", mode="before")
    @classmethod
    def _empty_port_is_off(cls, value: Any) -> Any:
        return 0 if isinstance(value, str) and not value.strip() else value

    @field_validator("oscar_presign_key")
    @classmethod
    def _hex_key_of_32_bytes(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return value
        try:
            key = bytes.fromhex(value)
        except ValueError:
            raise ValueError("must be hexadecimal (e.g. the output of `openssl rand -hex 32`)") from None
        if len(key) < PRESIGN_KEY_BYTES:
            raise ValueError(
                f"must be at least {PRESIGN_KEY_BYTES} bytes ({2 * PRESIGN_KEY_BYTES} hex digits)"
            )
        return value

    @field_validator("oscar_provider_allowed_networks")
    @classmethod
    def _networks_or_hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.removeprefix("[").removesuffix("]"), strict=False)
            except ValueError:
                if not _HOST_NAME.fullmatch(entry.rstrip(".")):
                    raise ValueError(f"{entry!r} is neither a network (CIDR) nor a host name") from None
        return value

    @property
    def database_url(self) -> str:
        if self.oscar_database_url:
            return self.oscar_database_url
        return f"sqlite+aiosqlite:///{(self.oscar_data_dir / 'oscar.db').resolve()}"

    @property
    def uses_minio(self) -> bool:
        """``minio.default`` is a MinIO (or S3) server rather than local folders."""
        return bool(self.minio_endpoint)

    @property
    def gives_users_minio_identities(self) -> bool:
        """OIDC users get MinIO users of their own (issue 16)."""
        return self.oidc_enable and self.uses_minio and self.oscar_minio_users

    @property
    def credentials_key_file(self) -> Path:
        return self.oscar_data_dir / "credentials-key"

    @property
    def serves_s3(self) -> bool:
        """The manager serves the local buckets over S3 itself (``api/s3``)."""
        return not self.uses_minio and self.oscar_s3_port != 0

    @property
    def presign_key_file(self) -> Path:
        return self.oscar_data_dir / "presign-key"

    @property
    def webhook_token_file(self) -> Path:
        return self.oscar_data_dir / "minio-webhook-token"

    @property
    def buckets_dir(self) -> Path:
        return self.oscar_data_dir / "buckets"

    @property
    def s3_uploads_dir(self) -> Path:
        """Parts of multipart uploads to the S3 face, until they are completed or aborted."""
        return self.oscar_data_dir / "s3-uploads"

    @property
    def work_dir(self) -> Path:
        return self.oscar_data_dir / "work"

    @property
    def password_file(self) -> Path:
        return self.oscar_data_dir / "admin-password"

    def with_admin_password(self) -> Settings:
        """Return settings whose admin password is set, generating and keeping one if none was given.

        The generated password is stored (mode 0600) in the data directory so that it survives restarts.
        """
        if self.oscar_password:
            return self
        password = kept_secret(self.password_file, lambda: secrets.token_urlsafe(18))
        return self.model_copy(update={"oscar_password": password})


def kept_secret(path: Path, generate: Callable[[], str]) -> str:
    """The secret stored in ``path`` (mode 0600), generated and stored on first use."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the data directory is private
    value = generate()
    path.touch(mode=0o600)
    path.write_text(value + "\n")
    return value
