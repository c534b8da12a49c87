"""MinIO benchmarks, each against a raw S3 call to the same MinIO in the same run.

1. Service create latency: ``POST /system/services`` (one input and one output folder, so two buckets,
   two folder markers and the bucket notification rules) on a real ``oscar-manager serve`` with a real
   MinIO, against a raw S3 ``PutObject`` of a small object. Upstream restarts MinIO on every create (~6 s).
2. Upload-to-job latency: a boto3 ``PutObject`` into an input folder until the job shows in
   ``/system/logs/{service}`` (the event went through the listen stream or the webhook into the intake and
   the dispatcher submitted it), and until its output object exists; against the raw ``PutObject``.

Usage: ``python -m bench.minio_storage [--creates 50] [--uploads 30] [--source listen|webhook]``. Builds
MinIO with ``scripts/build-minio`` if needed. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import httpx

from tests.support.components import free_port
from tests.support.minio import MinioServer, locate_minio_binary, webhook_env
from tests.support.server import RunningServer, start_server, stop_server

SCRIPT = 'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\n'
TOKEN = "b" * 64


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms"


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def wait_until(check: Callable[[], bool], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("gave up waiting")
        time.sleep(0.002)


def service(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": "img",
        "script": SCRIPT,
        "input": [{"path": f"{name}/in"}],
        "output": [{"path": f"{name}-out/out"}],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--creates", type=int, default=50)
    parser.add_argument("--uploads", type=int, default=30)
    parser.add_argument("--source", choices=["listen", "webhook"], default="listen")
    args = parser.parse_args()

    port = free_port()
    minio_env = webhook_env("OSCAR", f"http://127.0.0.1:{port}/events/minio", TOKEN)
    minio = MinioServer.start(locate_minio_binary(), env=minio_env if args.source == "webhook" else None)
    workdir = Path(tempfile.mkdtemp(prefix="bench-minio-"))
    env = {
        "MINIO_ENDPOINT": minio.endpoint,
        "MINIO_ACCESS_KEY": minio.access_key,
        "MINIO_SECRET_KEY": minio.secret_key,
        "OSCAR_PASSWORD": "bench",
        "OSCAR_RECONCILE_INTERVAL": "0",
    }
    if args.source == "webhook":
        env |= {
            "OSCAR_MINIO_LISTEN": "false",
            "OSCAR_MINIO_WEBHOOK_URL": f"http://127.0.0.1:{port}",
            "OSCAR_MINIO_WEBHOOK_TOKEN": TOKEN,
        }
    server: RunningServer = start_server(workdir, port, env=env)
    s3 = boto3.client(
        "s3",
        endpoint_url=minio.endpoint,
        region_name="us-east-1",
        aws_access_key_id=minio.access_key,
        aws_secret_access_key=minio.secret_key,
    )
    try:
        with httpx.Client(base_url=server.url, auth=("oscar", "bench"), timeout=30) as http:
            s3.create_bucket(Bucket="bench-raw")
            raw_puts = []
            for i in range(args.creates):

                def put(i: int = i) -> None:
                    s3.put_object(Bucket="bench-raw", Key=f"k{i}", Body=b"x")

                raw_puts.append(timed(put))
            creates = []
            for _ in range(args.creates):
                new = service(f"c-{uuid.uuid4().hex[:10]}")

                def create(body: dict[str, Any] = new) -> None:
                    http.post("/system/services", json=body).raise_for_status()

                creates.append(timed(create))
            print(f"service create ({args.creates}x, MinIO)    {percentiles(creates)}")
            print(f"raw S3 PutObject (baseline)       {percentiles(raw_puts)}")
            ratio = statistics.median(creates) / statistics.median(raw_puts)
            print(f"ratio create/put (p50)            {ratio:.1f}x")

            name = f"u-{uuid.uuid4().hex[:10]}"
            http.post("/system/services", json=service(name)).raise_for_status()
            if args.source == "listen":
                wait_until(lambda: name in http.get("/system/info").json()["storage"]["listening"])
            else:
                wait_until(lambda: http.get("/system/info").json()["storage"]["event_sources"] == ["webhook"])
            to_job: list[float] = []
            to_output: list[float] = []
            puts: list[float] = []
            for index in range(args.uploads):
                seen = len(http.get(f"/system/logs/{name}").json()["jobs"])
                key = f"in/{index:04d}.txt"
                started = time.perf_counter()
                s3.put_object(Bucket=name, Key=key, Body=b"payload")
                puts.append(time.perf_counter() - started)

                def job_recorded(seen: int = seen) -> bool:
                    return len(http.get(f"/system/logs/{name}").json()["jobs"]) > seen

                wait_until(job_recorded)
                to_job.append(time.perf_counter() - started)

                def output_exists(index: int = index) -> bool:
                    listed = s3.list_objects_v2(Bucket=f"{name}-out", Prefix=f"out/{index:04d}.txt")
                    return bool(listed.get("KeyCount"))

                wait_until(output_exists)
                to_output.append(time.perf_counter() - started)
            print(f"upload -> job recorded ({args.source})    {percentiles(to_job)}")
            print(f"upload -> output in MinIO         {percentiles(to_output)}")
            print(f"the PutObject itself (baseline)   {percentiles(puts)}")
            ratio = statistics.median(to_job) / statistics.median(puts)
            print(f"ratio job/put (p50)               {ratio:.1f}x")
    finally:
        stop_server(server)
        minio.stop()


if __name__ == "__main__":
    main()
