// node-redis v5 against TokMesh, constructed as its users do (library defaults: RESP2,
// AUTH, CLIENT SETINFO). Prints one JSON line; exits non-zero on the first failure.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { createClient } from "redis";
import { checkKeyCommands, checkPipeline, clientFields, pipelineCommands, rejects, settings } from "./check.mjs";

const version = createRequire(import.meta.url)("redis/package.json").version;
const s = settings();
const url = (c) =>
  `redis://${encodeURIComponent(c.username)}:${encodeURIComponent(c.password)}@127.0.0.1:${s.port}`;

const issuer = createClient({ url: url(s.issuer) });
issuer.on("error", (err) => console.error("issuer:", err.message));
await issuer.connect();
assert.equal(await issuer.ping(), "PONG");
const info = clientFields(await issuer.sendCommand(["CLIENT", "INFO"]));
assert.equal(info["lib-name"], "node-redis");
assert.equal(info["lib-ver"], version);

// TM.CREATE / TM.VALIDATE
const [sid, ...rest] = s.sids;
const created = JSON.parse(
  await issuer.sendCommand(["TM.CREATE", sid, JSON.stringify({ user_id: "node-redis" }), "TTL", "60"]),
);
assert.equal(created.session_id, sid);
assert.equal(await issuer.sendCommand(["TM.VALIDATE", created.token]), "OK");
await rejects(issuer.sendCommand(["TM.VALIDATE", "tmtk_" + "A".repeat(43)]), /^ERR TM-TOKN-4010 Token invalid$/);

// GET / TTL / EXPIRE / DEL
await checkKeyCommands(issuer, sid, "node-redis");

// A pipeline of 100 mixed commands, in order.
const sids = rest.slice(0, 20);
const pipe = issuer.multi();
for (const cmd of pipelineCommands(sids)) pipe.addCommand(cmd);
checkPipeline(sids, await pipe.execAsPipeline());

// The documented errors.
await rejects(issuer.sendCommand(["FLUSHALL"]), /^ERR unknown command 'FLUSHALL', with args beginning with: $/);
await rejects(issuer.sendCommand(["SELECT", "1"]), /^ERR DB index is out of range$/);
const validator = createClient({ url: url(s.validator) });
validator.on("error", () => {});
await validator.connect();
await rejects(validator.set(rest[20], "{}"), /^ERR TM-AUTH-4030 permission denied for command 'SET'$/);
assert.equal(await validator.exists(rest[20]), 0);
await validator.close();

// Not reconnecting is the one setting changed: by default node-redis retries a refused
// AUTH forever, and the server's brute-force guard would then block this address.
const wrong = createClient({
  url: url({ username: s.validator.username, password: "tmas_" + "x".repeat(43) }),
  socket: { reconnectStrategy: false },
});
wrong.on("error", () => {});
await rejects(wrong.connect(), /TM-AUTH-4011 invalid credentials/);

const line = await issuer.sendCommand(["CLIENT", "INFO"]);
await issuer.close();
console.log(JSON.stringify({ client: "node-redis", version, resp: Number(clientFields(line).resp) }));
