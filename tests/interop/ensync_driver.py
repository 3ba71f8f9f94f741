#!/usr/bin/env python3
"""Drive a PUBLISHED EnSync Python client (ensync-sdk 0.4.0 or 0.4.4) step by step.

Used by the Rust interop tests (tests/tests/interop_python.rs); runnable by hand too.

    python ensync_driver.py '<config json>'   < steps.jsonl

Config: {"url": "grpc://127.0.0.1:PORT",
         "apps": {"a": {"access_key": "...", "secret_key": "<b64 64 bytes>", "public_key": "<b64>"}, ...}}

Then one JSON step per line on stdin; for each step exactly one JSON line on stdout:
    {"i": <step index>, "op": <op>, "ok": true|false, ...}
On failure: "error" (text), "error_type" (the client's EnSyncError type, or the Python
exception class) and "timeout": true when the step did not finish within its
"timeout_ms" (default 10000): the harness tells "the client reported a failure"
from "the client hung". Line 0 is {"op": "hello", "sdk_version", "generation"}.

Steps (all take an optional "timeout_ms"):
  connect     {session, app, access_key?, readme_options?}
              create_client; returns client_hash. readme_options=true: only the README's
              {"app_secret_key": ...}, without the "appSecretKey" the code reads
  subscribe   {session, event, auto_ack?=true, reply?: {event, payload}, readme_options?}
              registers a handler that records every delivered event (and, with
              "reply", publishes `payload` back to the event's `sender` from the handler)
  publish     {session, event, to: [recipient], payload, metadata?, hybrid?}
              a recipient "@name" is apps[name].public_key; anything else is used as is
  publish_raw {session, event, to: recipient, shape, payload, metadata?}
              publishes an envelope built here with PyNaCl, through the client's own stub:
              shape is "single", "hybrid-go", "hybrid-node" or "hybrid-python"
  wait        {session, event, count}           until `count` events were delivered; returns all
  quiet       {session, event, ms}              sleep `ms`; returns all events delivered so far
  ack         {session, event, idem, block}
  defer       {session, event, idem, delay_ms, reason?, public?}
  discard     {session, event, idem, reason?, public?}
              public=true: call the subscription's method even where it is known broken
  readme_subscribe {session, event}             `await client.subscribe(name)` as in the README
  replay      {session, event, idem}            returns the replayed, decrypted payload
  pause       {session, event, reason?}
  resume      {session, event}
  unsubscribe {session, event}
  close       {session}
  client_log  {}                                error lines the published clients logged since
                                                the last client_log (their logger "EnSync:gRPC")

Known defects of the published clients are worked around here, never hidden
(docs/interop.md lists them; each workaround is named in the step's "workaround"):
  * README options vs code: create_client reads "appSecretKey", subscriptions read
    "autoAck"/"appSecretKey"; the README says "app_secret_key"/"auto_ack". Both are passed.
  * README's `await client.subscribe(name)` is not awaitable in either version (0.4.0:
    a decorator factory; 0.4.4: a SubscriptionDecorator). The subscription object comes
    from the client's own subscription factory (0.4.4: SubscriptionDecorator's).
  * 0.4.4 defer/discard raise after the node applied them (asyncio.get_message_loop);
    they are sent as the same request through the client's own stub and channel.
"""
import asyncio
import base64
import json
import logging
import sys
import time
import traceback

import nacl.bindings
import nacl.public
import nacl.secret
import nacl.utils

import ensync_sdk
from ensync_sdk import EnSyncEngine, ensync_pb2
from ensync_core.error import EnSyncError
from ensync_core import ecc_crypto
from ensync_core.payload_utils import get_payload_metadata

# Texts of the workarounds, reported in the answers of the steps that apply them
# (docs/interop.md lists those met during the run).
W_SECRET_OPTION = (
    "`create_client(access_key, {\"app_secret_key\": ...})` as the README shows does not set the "
    "secret key: the code reads the option `appSecretKey`, and without it decrypts with the app's "
    "public key, so every event is dropped with `Failed to decrypt`. The driver passes both names.")
W_SUBSCRIBE_040 = (
    "README's `subscription = await client.subscribe(name)` raises `TypeError`: in 0.4.0 `subscribe` is a "
    "decorator factory for handlers registered before connecting. The driver takes the subscription object "
    "from the factory the client itself calls on connect, `client._create_subscription(name, options)`, then "
    "uses its public `on`, `ack`, `defer`, `discard`, `replay`, `pause`, `resume`. That factory reads "
    "`autoAck`/`appSecretKey`, not the README's `auto_ack`/`app_secret_key`: both are passed.")
W_SUBSCRIBE_044 = (
    "README's `subscription = await client.subscribe(name)` raises `TypeError`: in 0.4.4 `subscribe` returns "
    "a `SubscriptionDecorator` (not awaitable) whose `@handler` only takes effect on the next connect. The "
    "driver takes the live subscription from `SubscriptionDecorator._ensure_subscription()` (what the "
    "decorator's own `ack`/`pause`/... call), then uses its public `on`, `ack`, `replay`, `pause`, `resume`. "
    "That path reads `autoAck`/`appSecretKey`, not the README's `auto_ack`/`app_secret_key`: both are passed.")
W_DEFER_DISCARD = (
    "0.4.4 `defer()` and `discard()` raise `AttributeError: module 'asyncio' has no attribute "
    "'get_message_loop'` after the node has answered success (see the row on the methods as published). "
    "The driver sends the same `DeferRequest`/`DiscardRequest` through the client's own stub and channel "
    "(`DeferMessage`/`DiscardMessage`) and checks the node's answer.")

GEN = 2 if hasattr(ensync_pb2, "PublishMessageRequest") else 1
T0 = time.monotonic()


def now_ms():
    return round((time.monotonic() - T0) * 1000.0, 1)


def out(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def fields(**kw):
    """Request fields named as generation 1 (event_*), renamed for generation 2."""
    if GEN == 1:
        return kw
    return {(("message_" + k[len("event_"):]) if k.startswith("event_") else k): v for k, v in kw.items()}


def rpc(name1):
    """RPC method name of generation 1 -> the name this client's stub has."""
    if GEN == 1:
        return name1
    return {"DeferEvent": "DeferMessage", "DiscardEvent": "DiscardMessage",
            "PublishEvent": "PublishMessage"}[name1]


class LogCapture(logging.Handler):
    """Collects what the published client logs at ERROR (e.g. "Failed to decrypt")."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


CAPTURE = LogCapture()
_client_logger = logging.getLogger("EnSync:gRPC")
_client_logger.setLevel(logging.ERROR)
_client_logger.addHandler(CAPTURE)


class Sub:
    def __init__(self, name):
        self.name = name
        self.subscription = None
        self.events = []
        self.changed = asyncio.Event()


class Session:
    def __init__(self, name, app, client):
        self.name = name
        self.app = app
        self.client = client
        self.subs = {}


class Driver:
    def __init__(self, config):
        self.url = config["url"]
        self.apps = config.get("apps", {})
        self.sessions = {}

    # ---- helpers -------------------------------------------------------------------

    def recipient(self, r):
        if isinstance(r, str) and r.startswith("@"):
            return self.apps[r[1:]]["public_key"]
        return r

    def session(self, step):
        return self.sessions[step["session"]]

    def sub(self, step):
        return self.session(step).subs[step["event"]]

    @staticmethod
    def event_record(ev):
        return {
            "idem": ev.get("idem"),
            # 0.4.0 names the key eventName, 0.4.4 messageName.
            "event_name": ev.get("eventName", ev.get("messageName")),
            "block": ev.get("block"),
            "payload": ev.get("payload"),
            "sender": ev.get("sender"),
            "metadata": ev.get("metadata"),
            "keys": sorted(ev.keys()),
            "at_ms": now_ms(),
        }

    # ---- steps ---------------------------------------------------------------------

    async def op_connect(self, step):
        app = self.apps[step["app"]]
        access_key = step.get("access_key", app["access_key"])
        secret = app["secret_key"]
        engine = EnSyncEngine(self.url)
        # README: {"app_secret_key": ...}; the code reads "appSecretKey". Pass both.
        if step.get("readme_options"):
            # Exactly the README's options (to show what they do).
            client = await engine.create_client(access_key, {"app_secret_key": secret})
        else:
            client = await engine.create_client(access_key, {"app_secret_key": secret, "appSecretKey": secret})
        self.sessions[step["session"]] = Session(step["session"], step["app"], client)
        return {"client_hash": client.client_hash, "client_id_set": bool(client.client_id),
                "workaround": W_SECRET_OPTION}

    async def op_subscribe(self, step):
        s = self.session(step)
        name = step["event"]
        auto_ack = bool(step.get("auto_ack", True))
        secret = self.apps[s.app]["secret_key"]
        opts = {"auto_ack": auto_ack, "autoAck": auto_ack, "app_secret_key": secret, "appSecretKey": secret}
        if step.get("readme_options"):
            opts = {}  # the README's plain `subscribe(name)`: the client's own key is used
        if GEN == 2:
            # Public API of 0.4.4: client.subscribe() -> SubscriptionDecorator; its
            # methods create the subscription through _ensure_subscription().
            decorator = s.client.subscribe(name, **opts)
            subscription = await decorator._ensure_subscription()
            how = W_SUBSCRIBE_044
        else:
            # 0.4.0: client.subscribe() is a decorator factory for handlers registered
            # before connect; the subscription object comes from the same factory that
            # the client uses on connect.
            subscription = await s.client._create_subscription(name, opts)
            how = W_SUBSCRIBE_040
        sub = Sub(name)
        sub.subscription = subscription
        s.subs[name] = sub
        reply = step.get("reply")
        client = s.client

        async def handler(ev):
            sub.events.append(self.event_record(ev))
            sub.changed.set()
            if reply is not None:
                # README "Replying to Events": publish back to event['sender'].
                await client.publish(reply["event"], [ev.get("sender")], reply["payload"])

        # No await between creating the stream task and registering the handler, so
        # nothing the stream reads can miss the handler.
        subscription.on(handler)
        return {"workaround": how}

    async def op_publish(self, step):
        s = self.session(step)
        to = [self.recipient(r) for r in step["to"]]
        options = None
        if "hybrid" in step:
            options = {"useHybridEncryption": bool(step["hybrid"])}
        idems = await s.client.publish(step["event"], to, step["payload"], step.get("metadata"), options)
        return {"idems": idems.split(",") if idems else []}

    async def op_publish_raw(self, step):
        s = self.session(step)
        to = self.recipient(step["to"])
        plaintext = json.dumps(step["payload"]).encode("utf-8")
        envelope = build_envelope(step["shape"], plaintext, to)
        payload = base64.b64encode(json.dumps(envelope).encode("utf-8")).decode("ascii")
        cls = ensync_pb2.PublishEventRequest if GEN == 1 else ensync_pb2.PublishMessageRequest
        request = cls(**fields(
            client_id=s.client.client_id, event_name=step["event"], payload=payload, delivery_to=to,
            metadata=json.dumps(step.get("metadata") or {}),
            payload_metadata=json.dumps(get_payload_metadata(step["payload"]))))
        response = await getattr(s.client._stub, rpc("PublishEvent"))(request)
        idem = response.event_idem if GEN == 1 else response.message_idem
        if not response.success:
            raise EnSyncError(response.error_message, "RawPublishError")
        return {"idems": [idem], "envelope_keys": sorted(envelope.get("keys", {}).keys())}

    async def _wait(self, sub, count):
        while len(sub.events) < count:
            sub.changed.clear()
            await sub.changed.wait()

    async def op_wait(self, step):
        sub = self.sub(step)
        try:
            await asyncio.wait_for(self._wait(sub, int(step["count"])), step.get("timeout_ms", 10000) / 1000.0)
        except asyncio.TimeoutError:
            return {"ok": False, "timeout": True, "error": "fewer events than expected", "events": sub.events}
        return {"events": sub.events}

    async def op_quiet(self, step):
        await asyncio.sleep(int(step["ms"]) / 1000.0)
        return {"events": self.sub(step).events}

    async def op_ack(self, step):
        sub = self.sub(step)
        message = await sub.subscription.ack(step["idem"], int(step["block"]))
        return {"message": message}

    async def _raw_defer_discard(self, s, rpc1, **kw):
        """0.4.4 workaround: the same request the SDK sends, through the SDK's own stub."""
        cls = ensync_pb2.DeferRequest if rpc1 == "DeferEvent" else ensync_pb2.DiscardRequest
        request = cls(**fields(client_id=s.client.client_id, **kw))
        response = await getattr(s.client._stub, rpc(rpc1))(request)
        if not response.success:
            raise EnSyncError(response.message, "EnSyncMessageError")
        return response

    async def op_defer(self, step):
        s = self.session(step)
        sub = self.sub(step)
        at = now_ms()
        delay = int(step["delay_ms"])
        reason = step.get("reason", "")
        if GEN == 2 and not step.get("public"):
            response = await self._raw_defer_discard(
                s, "DeferEvent", event_idem=step["idem"], event_name=sub.name, delay_ms=delay, reason=reason)
            return {"sent_at_ms": at, "delivery_time": response.delivery_time, "workaround": W_DEFER_DISCARD}
        result = await sub.subscription.defer(step["idem"], delay, reason)
        return {"sent_at_ms": at, "delivery_time": result.get("scheduledDelivery")}

    async def op_discard(self, step):
        s = self.session(step)
        sub = self.sub(step)
        reason = step.get("reason", "")
        if GEN == 2 and not step.get("public"):
            await self._raw_defer_discard(s, "DiscardEvent", event_idem=step["idem"], event_name=sub.name, reason=reason)
            return {"workaround": W_DEFER_DISCARD}
        result = await sub.subscription.discard(step["idem"], reason)
        return {"action": result.get("action")}

    async def op_replay(self, step):
        sub = self.sub(step)
        result = await sub.subscription.replay(step["idem"])
        return {"idem": result.get("idem"), "payload": result.get("payload")}

    async def op_readme_subscribe(self, step):
        """`subscription = await client.subscribe(name)`, exactly as the README shows."""
        s = self.session(step)
        subscription = await s.client.subscribe(step["event"])
        return {"type": type(subscription).__name__}

    async def op_pause(self, step):
        result = await self.sub(step).subscription.pause(step.get("reason", ""))
        return {"action": result.get("action")}

    async def op_resume(self, step):
        result = await self.sub(step).subscription.resume()
        return {"action": result.get("action")}

    async def op_unsubscribe(self, step):
        s = self.session(step)
        await self.sub(step).subscription.unsubscribe()
        del s.subs[step["event"]]
        return {}

    async def op_close(self, step):
        s = self.sessions.pop(step["session"])
        await s.client.close()
        return {}

    async def op_client_log(self, step):
        lines, CAPTURE.lines = CAPTURE.lines, []
        return {"lines": lines}

    async def run_step(self, i, step):
        op = step.get("op", "")
        handler = getattr(self, "op_" + op, None)
        result = {"i": i, "op": op}
        if handler is None:
            result.update(ok=False, error="unknown op " + repr(op), error_type="DriverError", timeout=False)
            return result
        timeout = step.get("timeout_ms", 10000) / 1000.0
        try:
            got = await asyncio.wait_for(handler(step), timeout + (1.0 if op == "wait" else 0.0))
            result.update(ok=True, timeout=False)
            result.update(got)
        except asyncio.TimeoutError:
            result.update(ok=False, timeout=True, error="step timed out after %d ms" % (timeout * 1000),
                          error_type="Timeout")
        except EnSyncError as e:
            result.update(ok=False, timeout=False, error=str(e), error_type=e.error_type)
        except Exception as e:  # what the published client raised, reported as is
            result.update(ok=False, timeout=False, error="%s: %s" % (type(e).__name__, e),
                          error_type=type(e).__name__, traceback=traceback.format_exc(limit=3))
        return result

    async def shutdown(self):
        for s in list(self.sessions.values()):
            try:
                await asyncio.wait_for(s.client.close(), 5)
            except Exception:
                pass


# ---- envelopes built here (PyNaCl) in the shapes of the published Go, Node and Python SDKs


def _b64(b):
    return base64.b64encode(b).decode("ascii")


def _box_for(recipient_b64, message):
    """NaCl crypto_box with a fresh ephemeral key to an Ed25519 public key."""
    ed = base64.b64decode(recipient_b64)
    curve = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed)
    eph = nacl.public.PrivateKey.generate()
    nonce = nacl.utils.random(nacl.public.Box.NONCE_SIZE)
    ct = nacl.public.Box(eph, nacl.public.PublicKey(curve)).encrypt(message, nonce).ciphertext
    return {"nonce": _b64(nonce), "ciphertext": _b64(ct), "ephemeralPublicKey": _b64(bytes(eph.public_key))}


def build_envelope(shape, plaintext, recipient_b64):
    if shape == "single":
        return _box_for(recipient_b64, plaintext)
    if shape == "hybrid-python":
        # The published Python client's own hybrid writer (ensync-core 0.1.2).
        enc = ecc_crypto.hybrid_encrypt(plaintext, [base64.b64decode(recipient_b64)])
        return {"type": "hybrid", "payload": enc["encryptedPayload"], "keys": enc["encryptedKeys"]}
    key = nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE)
    nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
    ct = nacl.secret.SecretBox(key).encrypt(plaintext, nonce).ciphertext
    wrapped = _box_for(recipient_b64, key)
    if shape == "hybrid-go":
        # Go SDK: keyed by base64 public key, field "ciphertext", raw 32-byte key boxed.
        keys = {recipient_b64: wrapped}
    elif shape == "hybrid-node":
        # Node SDK: keyed by the recipient as given, field "encryptedKey".
        keys = {recipient_b64: {"nonce": wrapped["nonce"], "encryptedKey": wrapped["ciphertext"],
                                "ephemeralPublicKey": wrapped["ephemeralPublicKey"]}}
    else:
        raise ValueError("unknown envelope shape " + repr(shape))
    return {"type": "hybrid", "payload": {"nonce": _b64(nonce), "ciphertext": _b64(ct)}, "keys": keys}


async def main():
    if len(sys.argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    driver = Driver(json.loads(sys.argv[1]))
    out({"i": -1, "op": "hello", "ok": True, "sdk_version": ensync_sdk.__version__, "generation": GEN,
         "python": sys.version.split()[0]})
    loop = asyncio.get_running_loop()
    i = 0
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            try:
                step = json.loads(line)
            except ValueError as e:
                out({"i": i, "op": "", "ok": False, "timeout": False, "error": "bad step json: %s" % e,
                     "error_type": "DriverError"})
                i += 1
                continue
            out(await driver.run_step(i, step))
            i += 1
    finally:
        await driver.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
