"""Service inputs on Kafka topics: a ``kafka.<id>`` provider (where the brokers are, how to log in) and
inputs whose ``path`` names the topic, as a ``minio.<id>`` input's path names its bucket.

Upstream has no Kafka provider; this keeps its provider/input model: the provider entry holds the
connection, so several inputs (and services) can name topics on one cluster, and an input says what to
read. Each service reads as a consumer group of its own (``oscar-<service>`` unless the provider names
one), so every service sees every message of its topics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from oscar_manager.errors import BadRequest

KAFKA = "kafka"
# The provider entry's fields (strings, but ``verify``); ``sasl_password`` is masked like other secrets.
KAFKA_FIELDS = (
    "bootstrap_servers",
    "group_id",
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ca_cert",
)
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# Kafka's own rule for topic names (``Topic.validate``).
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_SERVER = re.compile(r"^\[?[A-Za-z0-9.:_-]+\]?:[0-9]{1,5}$")


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    """How to reach one provider's brokers."""

    provider: str  # kafka.<id>
    bootstrap_servers: tuple[str, ...]
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    verify: bool = True
    ca_cert: str = ""  # PEM text: the CA the brokers' certificates are checked against (system's if empty)


@dataclass(frozen=True, slots=True)
class KafkaInput:
    """What one service consumes from one provider: its topics, as its own consumer group."""

    service: str
    connection: KafkaConnection
    group_id: str
    topics: tuple[str, ...]


def default_group(service: str) -> str:
    return f"oscar-{service}"


def _text(entry: dict[str, Any], name: str) -> str:
    value = entry.get(name)
    return value.strip() if isinstance(value, str) else ""


def connection(provider_id: str, entry: dict[str, Any]) -> KafkaConnection:
    """The provider entry as a connection, or a 400 naming the field that is wrong."""
    where = f"storage_providers.kafka.{provider_id}"
    servers = tuple(s.strip() for s in _text(entry, "bootstrap_servers").split(",") if s.strip())
    if not servers:
        raise BadRequest(f"{where}.bootstrap_servers: name at least one broker as host:port")
    for server in servers:
        if not _SERVER.match(server):
            raise BadRequest(f"{where}.bootstrap_servers: {server!r} is not host:port")
    protocol = _text(entry, "security_protocol").upper() or "PLAINTEXT"
    if protocol not in SECURITY_PROTOCOLS:
        raise BadRequest(f"{where}.security_protocol: {protocol!r} (valid: {', '.join(SECURITY_PROTOCOLS)})")
    mechanism = _text(entry, "sasl_mechanism").upper()
    if protocol.startswith("SASL"):
        mechanism = mechanism or "PLAIN"
        if mechanism not in SASL_MECHANISMS:
            raise BadRequest(f"{where}.sasl_mechanism: {mechanism!r} (valid: {', '.join(SASL_MECHANISMS)})")
        if not _text(entry, "sasl_username"):
            raise BadRequest(f"{where}.sasl_username: needed with security_protocol {protocol}")
    verify = entry.get("verify", True)
    if not isinstance(verify, bool):
        raise BadRequest(f"{where}.verify must be true or false")
    return KafkaConnection(
        provider=f"{KAFKA}.{provider_id}",
        bootstrap_servers=servers,
        security_protocol=protocol,
        sasl_mechanism=mechanism if protocol.startswith("SASL") else "",
        sasl_username=_text(entry, "sasl_username"),
        sasl_password=str(entry.get("sasl_password") or ""),
        verify=verify,
        ca_cert=_text(entry, "ca_cert"),
    )


def check_topic(topic: str) -> None:
    if not _TOPIC.match(topic) or topic in (".", ".."):
        raise BadRequest(
            f"input path {topic!r} of a kafka provider must be a topic name: 1 to 249 letters, digits, "
            "'.', '_' or '-'"
        )


def kafka_inputs(
    service: str, inputs: list[tuple[str, str]], providers: dict[str, dict[str, Any]]
) -> list[KafkaInput]:
    """The service's Kafka inputs, one per provider (its topics together), from its (provider, path)
    inputs and its ``storage_providers.kafka`` entries; a 400 naming the field for a bad one."""
    topics: dict[str, list[str]] = {}
    for provider, path in inputs:
        kind, _, ident = provider.partition(".")
        if kind.lower() != KAFKA:
            continue
        topic = path.strip().strip("/")
        check_topic(topic)
        listed = topics.setdefault(ident or "default", [])
        if topic not in listed:
            listed.append(topic)
    found = []
    for ident, names in topics.items():
        entry = providers.get(ident)
        if entry is None:
            raise BadRequest(f"input storage provider 'kafka.{ident}' is not declared in storage_providers")
        found.append(
            KafkaInput(
                service=service,
                connection=connection(ident, entry),
                group_id=_text(entry, "group_id") or default_group(service),
                topics=tuple(names),
            )
        )
    return found


def message_dedup_key(
    service: str, provider: str, topic: str, partition: int, offset: int, timestamp: int
) -> str:
    """One message of a topic, for one service. The timestamp (stored with the message, so the same on
    every delivery) tells a message of a topic deleted and made again, whose offsets start over, from the
    one that held its offset before."""
    return f"kafka:{service}:{provider}:{topic}/{partition}/{offset}@{timestamp}"
