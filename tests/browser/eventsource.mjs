// The npm `eventsource` package (a WHATWG EventSource for Node) against herald:
// CONNECTED first, the published events with their names and ids, no empty
// event, then, when the server ends the stream, a reconnect after the `retry:`
// hint carrying Last-Event-ID (a broadcast published while it was away arrives). Run by tests/clients.rs; exits 0 when all held.
//
// Usage: node eventsource.mjs http://127.0.0.1:PORT
import { EventSource } from 'eventsource';

const base = process.argv[2];
const user = 'es-user';
const fail = (why) => {
  console.error(`eventsource test: ${why}`);
  process.exit(1);
};
setTimeout(() => fail('did not finish within 15 s'), 15000).unref();

const post = async (path, body) => {
  const r = await fetch(base + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!r.ok) fail(`${path} answered ${r.status}: ${await r.text()}`);
  return r.json();
};

const es = new EventSource(`${base}/api/user/sse/connect?userId=${user}`);
const seen = [];
let connects = 0;
let connectionId = null;
let lastId = null;

es.addEventListener('message', (e) => seen.push({ type: 'message', data: e.data, id: e.lastEventId }));
es.addEventListener('note', (e) => seen.push({ type: 'note', data: e.data, id: e.lastEventId }));
es.addEventListener('CONNECTED', async (e) => {
  connects += 1;
  const info = JSON.parse(e.data);
  if (info.userId !== user) fail(`CONNECTED for ${e.data}`);
  if (connects === 1) {
    connectionId = info.connectionId;
    const a = await post('/api/broadcast', { data: 'first', target: { users: [user] } });
    const b = await post('/api/broadcast', { event: 'note', data: { n: 2 }, target: { users: [user] } });
    lastId = b.id;
    const until = Date.now() + 5000;
    while (seen.length < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    if (seen.length !== 2) fail(`expected 2 events, got ${JSON.stringify(seen)}`);
    if (seen[0].type !== 'message' || seen[0].data !== 'first' || seen[0].id !== a.id) fail(`first: ${JSON.stringify(seen[0])}`);
    if (seen[1].type !== 'note' || seen[1].data !== '{"n":2}' || seen[1].id !== b.id) fail(`second: ${JSON.stringify(seen[1])}`);
    // The server ends the stream; EventSource comes back by itself after the
    // retry: hint, and a broadcast published meanwhile reaches it only through
    // its Last-Event-ID.
    await post(`/api/user/sse/disconnect?userId=${user}&connectionId=${connectionId}`);
    await post('/api/broadcast', { data: 'third', target: 'all' });
  } else {
    // A new stream, resumed from the last id: nothing missed, nothing empty.
    const until = Date.now() + 5000;
    while (seen.length < 3 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    if (seen.length !== 3 || seen[2].type !== 'message' || seen[2].data !== 'third') {
      fail(`events after the reconnect: ${JSON.stringify(seen)}`);
    }
    if (es.readyState !== EventSource.OPEN) fail(`readyState ${es.readyState}`);
    console.log(`eventsource test: ok (reconnected after ${lastId})`);
    es.close();
    process.exit(0);
  }
});
es.onerror = () => {
  // A reconnect after the stream ends raises an error event first: expected.
};
