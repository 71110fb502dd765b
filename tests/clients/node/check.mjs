// Small helpers shared by the client scenarios (node:assert does the checking).
import assert from "node:assert/strict";

/** The settings the Python test passes in TM_SCENARIO (JSON). */
export function settings() {
  const s = JSON.parse(process.env.TM_SCENARIO);
  const split = (cred) => {
    const i = cred.indexOf(":");
    return { username: cred.slice(0, i), password: cred.slice(i + 1) };
  };
  return { ...s, issuer: split(s.issuer), validator: split(s.validator) };
}

/** Await `promise` and check that it fails with an error whose message matches `re`. */
export async function rejects(promise, re) {
  try {
    await promise;
  } catch (err) {
    assert.match(String(err && err.message), re);
    return err;
  }
  assert.fail(`expected an error matching ${re}`);
}

/** The 100 mixed commands of the pipeline scenario, as argument lists. */
export function pipelineCommands(sids) {
  const cmds = [];
  for (let i = 0; i < 20; i++) {
    const sid = sids[i];
    cmds.push(["TM.CREATE", sid, JSON.stringify({ user_id: `pipe-${i}` }), "TTL", "120"]);
    cmds.push(["EXISTS", sid]);
    cmds.push(["TTL", sid]);
    cmds.push(["PING", `m${i}`]);
    cmds.push(["GET", sid]);
  }
  return cmds;
}

/** Check the replies of pipelineCommands (values already unwrapped, in order). */
export function checkPipeline(sids, replies) {
  assert.equal(replies.length, 100);
  for (let i = 0; i < 20; i++) {
    const [created, exists, ttl, pong, got] = replies.slice(i * 5, i * 5 + 5);
    assert.equal(JSON.parse(created).session_id, sids[i]);
    assert.equal(Number(exists), 1);
    assert.ok(Number(ttl) > 100 && Number(ttl) <= 120, `ttl ${ttl}`);
    assert.equal(String(pong), `m${i}`);
    assert.equal(JSON.parse(got).user_id, `pipe-${i}`);
  }
}

/** Parse a CLIENT INFO line into its fields. */
export function clientFields(line) {
  return Object.fromEntries(
    String(line)
      .trim()
      .split(" ")
      .map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]),
  );
}

// GET / TTL / EXPIRE / DEL on session `sid` of `userId`; both clients name these methods
// alike.
export async function checkKeyCommands(client, sid, userId) {
  assert.equal(JSON.parse(await client.get(sid)).user_id, userId);
  const ttl = await client.ttl(sid);
  assert.ok(ttl > 50 && ttl <= 60, `ttl ${ttl}`);
  assert.equal(await client.expire(sid, 120), 1);
  assert.ok((await client.ttl(sid)) > 100);
  assert.equal(await client.del(sid), 1);
  assert.equal(await client.get(sid), null);
  assert.equal(await client.ttl(sid), -2);
}
