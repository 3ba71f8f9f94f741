#!/usr/bin/env node
// Drive the PUBLISHED Node.js EnSync client (npm `ensync-client-sdk@0.0.18`, its default
// export: the WebSocket client) step by step. Used by tests/tests/interop_node.rs, in the
// same step protocol as ensync_driver.py:
//
//     node ensync_driver.js '<config json>'   < steps.jsonl
//
// Config: {"url": "http://127.0.0.1:PORT" (the client appends /message),
//          "apps": {"a": {"access_key", "secret_key", "public_key"}, ...}}
// One JSON step per line on stdin; for each step one JSON line on stdout:
//     {"i", "op", "ok": true|false, ...}; on failure "error", "error_type", "timeout".
// Line 0: {"op": "hello", "sdk_version"}.
//
// Steps (each takes an optional "timeout_ms", default 10000):
//   connect     {session, app, access_key?}   createClient; returns client_hash
//   subscribe   {session, event, auto_ack?=false}  subscribe + on(handler) recording events
//   publish     {session, event, to: ["@app" | key], payload, metadata?}  returns idems
//   publish_many {session, event, to, count}  `count` publishes started concurrently
//   wait        {session, event, count}       until `count` events arrived; returns all
//   quiet       {session, event, ms}          sleep; returns all events so far
//   ack         {session, event, idem, block}
//   rollback    {session, event, idem, block}
//   unsubscribe {session, event}
//   publish_until_ok {session, event, to, payload}  retries (100 ms apart) until the
//               client is connected and authenticated again (after a node restart)
//   close       {session}
//
// Known defects of this client (PROTOCOL.md section 4) are worked around HERE, never by
// weakening a check; each answer that needed one names it in "workaround":
//   * pending replies are keyed by Date.now(): two requests in one millisecond share a slot
//     and only one settles. Concurrent requests are therefore started >= 2 ms apart (they
//     are still all in flight at once; replies are matched first-in first-out).
//   * a +RECORD that arrives before on(handler) is registered (e.g. a backlog sent right
//     after the SUB reply) is dropped by the client: subscribe steps are only used when
//     the queue for that name is empty; redeliveries come later.
//   * close() hangs if the socket is already closed: it is raced against a short timer.
//   * createClient() hangs if the port is closed: every step has a timeout.
'use strict';

const path = require('path');
const readline = require('readline');

const sdkDir = path.join(__dirname, 'node_modules', 'ensync-client-sdk');
const { EnSyncEngine } = require(sdkDir);
const sdkVersion = require(path.join(sdkDir, 'package.json')).version;

const config = JSON.parse(process.argv[2] || '{}');
const sessions = new Map(); // session -> {client, subs: Map(event -> {sub, events: []})}

// The client logs every frame to the console: keep stdout for our answers only.
const out = process.stdout.write.bind(process.stdout);
const logLines = [];
console.log = (...a) => logLines.push(a.join(' '));
console.error = (...a) => logLines.push('ERROR ' + a.join(' '));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function withTimeout(promise, ms) {
    let timer;
    const t = new Promise((_, reject) => {
        timer = setTimeout(() => {
            const e = new Error(`step did not finish within ${ms} ms`);
            e.isTimeout = true;
            reject(e);
        }, ms);
    });
    return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

function recipient(r) {
    if (typeof r === 'string' && r.startsWith('@')) return config.apps[r.slice(1)].public_key;
    return r;
}

function session(name) {
    const s = sessions.get(name);
    if (!s) throw new Error(`no session ${name}`);
    return s;
}

function subOf(s, event) {
    const sub = s.subs.get(event);
    if (!sub) throw new Error(`not subscribed to ${event}`);
    return sub;
}

function idsOf(reply) {
    // "+PASS:<id>,+PASS:<id>" (one per recipient, joined by the client).
    return String(reply)
        .split(',')
        .map((p) => p.replace(/^\+PASS:/, ''));
}

const ops = {
    async connect(step) {
        const app = config.apps[step.app];
        const engine = new EnSyncEngine(config.url, { reconnectInterval: 200, maxReconnectAttempts: 50 });
        const client = await engine.createClient(step.access_key || app.access_key, {
            appSecretKey: app.secret_key,
        });
        sessions.set(step.session, { client, subs: new Map() });
        return {};
    },

    async subscribe(step) {
        const s = session(step.session);
        const app = step.app ? config.apps[step.app] : null;
        const sub = await s.client.subscribe(step.event, {
            autoAck: !!step.auto_ack,
            appSecretKey: app ? app.secret_key : null,
        });
        const entry = { sub, events: [] };
        sub.on((ev) => {
            entry.events.push({
                event_name: ev.eventName,
                idem: ev.idem,
                block: ev.block,
                payload: ev.payload,
                metadata: ev.metadata,
            });
        });
        s.subs.set(step.event, entry);
        return {};
    },

    async publish(step) {
        const s = session(step.session);
        const to = step.to.map(recipient);
        const reply = step.metadata === undefined
            ? await s.client.publish(step.event, to, step.payload)
            : await s.client.publish(step.event, to, step.payload, step.metadata);
        return { idems: idsOf(reply) };
    },

    async publish_many(step) {
        const s = session(step.session);
        const to = step.to.map(recipient);
        const pending = [];
        for (let n = 0; n < step.count; n++) {
            pending.push(s.client.publish(step.event, to, { n }));
            await sleep(2); // workaround: replies keyed by Date.now()
        }
        const replies = await Promise.all(pending);
        return { idems: replies.flatMap(idsOf), workaround: 'date-now-keys' };
    },

    async wait(step) {
        const entry = subOf(session(step.session), step.event);
        while (entry.events.length < step.count) await sleep(20);
        return { events: entry.events };
    },

    async quiet(step) {
        const entry = subOf(session(step.session), step.event);
        await sleep(step.ms);
        return { events: entry.events };
    },

    async ack(step) {
        const entry = subOf(session(step.session), step.event);
        return { reply: await entry.sub.ack(step.idem, step.block) };
    },

    async rollback(step) {
        const entry = subOf(session(step.session), step.event);
        return { reply: await entry.sub.rollback(step.idem, step.block) };
    },

    async unsubscribe(step) {
        const entry = subOf(session(step.session), step.event);
        await entry.sub.unsubscribe();
        return {};
    },

    async publish_until_ok(step) {
        const s = session(step.session);
        const to = step.to.map(recipient);
        let attempts = 0;
        for (;;) {
            attempts++;
            try {
                const reply = await s.client.publish(step.event, to, step.payload);
                return { idems: idsOf(reply), attempts };
            } catch (e) {
                await sleep(100);
            }
        }
    },

    async close(step) {
        const s = session(step.session);
        sessions.delete(step.session);
        await Promise.race([s.client.close(), sleep(1000)]); // workaround: close() may hang
        return {};
    },
};

async function run(step, i) {
    const op = ops[step.op];
    if (!op) return { i, op: step.op, ok: false, error: `unknown op ${step.op}`, error_type: 'Driver', timeout: false };
    try {
        const result = await withTimeout(op(step), step.timeout_ms || 10000);
        return { i, op: step.op, ok: true, timeout: false, ...result };
    } catch (e) {
        return {
            i,
            op: step.op,
            ok: false,
            error: String(e && e.message ? e.message : e),
            error_type: (e && e.name) || 'Error',
            timeout: !!(e && e.isTimeout),
        };
    }
}

async function main() {
    out(JSON.stringify({ op: 'hello', sdk_version: sdkVersion, node: process.version }) + '\n');
    const rl = readline.createInterface({ input: process.stdin });
    let i = 0;
    for await (const line of rl) {
        if (!line.trim()) continue;
        i++;
        let step;
        try {
            step = JSON.parse(line);
        } catch (e) {
            out(JSON.stringify({ i, ok: false, error: `bad step: ${e}`, error_type: 'Driver' }) + '\n');
            continue;
        }
        out(JSON.stringify(await run(step, i)) + '\n');
    }
    for (const s of sessions.values()) {
        await Promise.race([s.client.close(), sleep(500)]);
    }
    process.exit(0);
}

main();
