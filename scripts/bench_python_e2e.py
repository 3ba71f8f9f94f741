#!/usr/bin/env python3
"""The published Python client (ensync-sdk 0.4.4) doing ensync-bench's end-to-end work.

Run by `ensync-bench e2e` against the same node in the same run as the Rust adapters:

    python scripts/bench_python_e2e.py '<config json>'

Config: {"url": "grpc://127.0.0.1:PORT",
         "publisher": {"access_key", "secret_key", "public_key"},
         "recipients": [{"access_key", "secret_key", "public_key"}, ...],
         "scenarios": [{"id", "event", "mode": "sequential"|"concurrent"|"paced",
                        "count", "concurrency", "rate", "payload_bytes", "recipients",
                        "max_seconds"}, ...]}

For each scenario one JSON line on stdout:
    {"id", "published", "delivered", "seconds", "latencies_us": [...]} or {"id", "error"}
Progress goes to stderr.

The work is the same as the Rust side's: the publisher client publishes a JSON object of
`payload_bytes` (compact JSON) to `recipients` recipients, each recipient's own client is
subscribed with auto-ack (the client's default) and decrypts; the latency of an event is
from the start of its publish call to the start of its handler (both in this process,
`time.perf_counter_ns`). Throughput is deliveries per second from the first publish to
the last handler start. "concurrent" publishes the way the SDK's own load scripts do:
`asyncio.gather` over `concurrency` publishes at a time. With several recipients the
publish uses one envelope per recipient (`useHybridEncryption: False`): the published
Python client cannot decrypt the hybrid envelope it writes (docs/interop.md).

The workarounds of docs/interop.md apply: `appSecretKey` is passed besides the README's
`app_secret_key`, and the subscription comes from `SubscriptionDecorator._ensure_subscription()`.
"""
import asyncio
import json
import logging
import sys
import time

from ensync_sdk import EnSyncEngine


def log(msg):
    print(f"[python] {msg}", file=sys.stderr, flush=True)


def payload_of(seq, size):
    """A compact JSON object of exactly `size` bytes (for size >= 64) carrying `seq`."""
    base = {"seq": seq, "pad": ""}
    overhead = len(json.dumps(base, separators=(",", ":")))
    base["pad"] = "x" * max(0, size - overhead)
    return base


async def connect(url, app):
    engine = EnSyncEngine(url)
    secret = app["secret_key"]
    return await engine.create_client(app["access_key"], {"app_secret_key": secret, "appSecretKey": secret})


async def run_scenario(sc, url, publisher, recipient_clients, recipient_apps):
    n_rec = sc["recipients"]
    event = sc["event"]
    expected_per_event = n_rec
    sent_at = {}
    latencies = []
    delivered = 0
    done = asyncio.Event()
    state = {"published": 0, "target": None, "last": None}

    def check_done():
        if state["target"] is not None and delivered >= state["target"] * expected_per_event:
            done.set()

    subs = []
    for i in range(n_rec):
        client = recipient_clients[i]
        secret = recipient_apps[i]["secret_key"]
        opts = {"auto_ack": True, "autoAck": True, "app_secret_key": secret, "appSecretKey": secret}
        decorator = client.subscribe(event, **opts)
        subscription = await decorator._ensure_subscription()

        async def handler(ev):
            nonlocal delivered
            now = time.perf_counter_ns()
            seq = ev["payload"]["seq"]
            latencies.append((now - sent_at[seq]) / 1000.0)
            delivered += 1
            state["last"] = now
            check_done()

        subscription.on(handler)
        subs.append(subscription)
    # Let the subscribe streams open before publishing.
    await asyncio.sleep(0.3)

    to = [recipient_apps[i]["public_key"] for i in range(n_rec)]
    options = {"useHybridEncryption": False}
    payloads = [payload_of(seq, sc["payload_bytes"]) for seq in range(sc["count"])]
    deadline = time.perf_counter() + sc["max_seconds"]

    async def publish(seq):
        sent_at[seq] = time.perf_counter_ns()
        await publisher.publish(event, to, payloads[seq], None, options)
        state["published"] += 1

    start = time.perf_counter_ns()
    seq = 0
    mode = sc["mode"]
    if mode == "sequential":
        while seq < sc["count"] and time.perf_counter() < deadline:
            await publish(seq)
            seq += 1
    elif mode == "concurrent":
        while seq < sc["count"] and time.perf_counter() < deadline:
            batch = range(seq, min(seq + sc["concurrency"], sc["count"]))
            await asyncio.gather(*(publish(s) for s in batch))
            seq = batch[-1] + 1
    elif mode == "paced":
        interval = 1.0 / sc["rate"]
        tasks = []
        while seq < sc["count"] and time.perf_counter() < deadline:
            due = start / 1e9 + seq * interval
            delay = due - time.perf_counter_ns() / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(publish(seq)))
            seq += 1
        await asyncio.gather(*tasks)
    else:
        raise ValueError(f"unknown mode {mode}")
    state["target"] = seq
    check_done()
    try:
        await asyncio.wait_for(done.wait(), timeout=30)
    except asyncio.TimeoutError:
        log(f"{sc['id']}: {delivered} of {seq * expected_per_event} deliveries after 30 s")
    for s in subs:
        try:
            await s.unsubscribe()
        except Exception as e:  # noqa: BLE001 - reported, not fatal for the measurement
            log(f"{sc['id']}: unsubscribe failed: {e}")
    end = state["last"] or time.perf_counter_ns()
    return {
        "id": sc["id"],
        "published": seq,
        "delivered": delivered,
        "seconds": (end - start) / 1e9,
        "latencies_us": latencies,
    }


async def main():
    config = json.loads(sys.argv[1])
    logging.getLogger().setLevel(logging.CRITICAL)
    url = config["url"]
    publisher = await connect(url, config["publisher"])
    apps = config["recipients"]
    clients = [await connect(url, app) for app in apps]
    for sc in config["scenarios"]:
        log(f"{sc['id']} ...")
        try:
            result = await run_scenario(sc, url, publisher, clients, apps)
        except Exception as e:  # noqa: BLE001 - the bench reports it and goes on
            result = {"id": sc["id"], "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(result), flush=True)
    for c in [publisher, *clients]:
        try:
            await c.close()
        except Exception:  # noqa: BLE001
            pass


if __name__ == "__main__":
    asyncio.run(main())
