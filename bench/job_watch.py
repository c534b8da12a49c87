"""The Jobs of one namespace as the apiserver's admin sees them, watched from a process of its own (as the
API double runs in one: a busy manager's event loop must not delay the stamps), one line an event:
``created NAME T`` when a Job first appears (its ADDED event), ``finished NAME T`` when it first shows a
Complete or Failed condition. ``T`` is ``time.monotonic`` at the event's arrival, comparable with the
bench's loop time on the same machine. Prints ``watching`` once the watch is open: every Job created after
that line is seen. Usage: ``python -m bench.job_watch URL NAMESPACE CA CERT KEY``; runs until killed.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
from typing import Any

import httpx


def _finished(job: dict[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions)


def watch(http: httpx.Client, namespace: str) -> None:
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    listed = http.get(path)
    listed.raise_for_status()
    version = listed.json()["metadata"]["resourceVersion"]
    created: set[str] = set()
    finished: set[str] = set()
    announced = False
    # The apiserver ends a watch after timeoutSeconds (or at will): it is opened again from the last
    # version seen. A bench's run is minutes, well within etcd's history, so no 410 relist is needed.
    while True:
        params = {"watch": "true", "resourceVersion": version, "allowWatchBookmarks": "true"}
        with http.stream("GET", path, params=params) as answer:
            answer.raise_for_status()
            if not announced:
                print("watching", flush=True)
                announced = True
            for line in answer.iter_lines():
                arrived = time.monotonic()
                event = json.loads(line)
                if event["type"] == "ERROR":
                    raise SystemExit(f"watch failed: {event['object']}")
                job = event["object"]
                version = job["metadata"]["resourceVersion"]
                name = job["metadata"].get("name", "")
                if event["type"] == "BOOKMARK" or event["type"] == "DELETED":
                    continue
                if name not in created:
                    created.add(name)
                    print(f"created {name} {arrived}", flush=True)
                if name not in finished and _finished(job):
                    finished.add(name)
                    print(f"finished {name} {arrived}", flush=True)


def main() -> None:
    url, namespace, ca, cert, key = sys.argv[1:6]
    tls = ssl.create_default_context(cafile=ca)
    tls.load_cert_chain(cert, key)
    with httpx.Client(base_url=url, verify=tls, timeout=httpx.Timeout(30, read=None)) as http:
        watch(http, namespace)


if __name__ == "__main__":
    main()
