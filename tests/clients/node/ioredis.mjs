// ioredis 6 against TokMesh, constructed as its users do (library defaults: HELLO 3 with
// AUTH, CLIENT SETINFO, the INFO ready check). Prints one JSON line; exits non-zero on
// the first failure.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import Redis from "ioredis";
import { checkKeyCommands, checkPipeline, clientFields, pipelineCommands, rejects, settings } from "./check.mjs";

const version = createRequire(import.meta.url)("ioredis/package.json").version;
const s = settings();
const connect = (c, extra = {}) =>
  new Redis({ host: "127.0.0.1", port: s.port, username: c.username, password: c.password, ...extra });

const issuer = connect(s.issuer);
issuer.on("error", (err) => console.error("issuer:", err.message));
assert.equal(await issuer.ping(), "PONG");
const info = clientFields(await issuer.client("INFO"));
assert.equal(info["lib-name"], "ioredis");
assert.equal(info["lib-ver"], version);

// TM.CREATE / TM.VALIDATE
const [sid, ...rest] = s.sids;
const created = JSON.parse(
  await issuer.call("TM.CREATE", sid, JSON.stringify({ user_id: "ioredis" }), "TTL", "60"),
);
assert.equal(created.session_id, sid);
assert.equal(await issuer.call("TM.VALIDATE", created.token), "OK");
await rejects(issuer.call("TM.VALIDATE", "tmtk_" + "A".repeat(43)), /^ERR TM-TOKN-4010 Token invalid$/);

// GET / TTL / EXPIRE / DEL
await checkKeyCommands(issuer, sid, "ioredis");

// A pipeline of 100 mixed commands, in order.
const sids = rest.slice(0, 20);
const pipe = issuer.pipeline();
for (const cmd of pipelineCommands(sids)) pipe.call(...cmd);
const results = await pipe.exec();
for (const [err] of results) assert.equal(err, null);
checkPipeline(sids, results.map(([, value]) => value));

// The documented errors.
await rejects(issuer.call("FLUSHALL"), /^ERR unknown command 'FLUSHALL', with args beginning with: $/);
await rejects(issuer.select(1), /^ERR DB index is out of range$/);
const validator = connect(s.validator);
await rejects(validator.set(rest[20], "{}"), /^ERR TM-AUTH-4030 permission denied for command 'SET'$/);
assert.equal(await validator.exists(rest[20]), 0);
validator.disconnect();

// Not reconnecting is the one setting changed: by default ioredis retries a refused
// AUTH forever, and the server's brute-force guard would then block this address.
const wrong = connect(
  { username: s.validator.username, password: "tmas_" + "x".repeat(43) },
  { lazyConnect: true, retryStrategy: () => null },
);
const seen = [];
wrong.on("error", (err) => seen.push(err.message)); // ioredis reports the reply here
await rejects(wrong.connect(), /Connection is closed/);
assert.ok(seen.some((m) => /^ERR TM-AUTH-4011 invalid credentials$/.test(m)), seen.join("; "));
wrong.disconnect();

const line = await issuer.client("INFO");
issuer.disconnect();
console.log(JSON.stringify({ client: "ioredis", version, resp: Number(clientFields(line).resp) }));
