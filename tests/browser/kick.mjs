// A user kicked with reconnect=false, in headless Chromium: the page's
// EventSource is ended by the server, reconnects after its retry: hint, gets
// 204 No Content and stops for good (readyState CLOSED), and does not come
// back. Run by tests/browser.rs with herald started with a 1 s retry: hint:
//
//   node kick.mjs http://127.0.0.1:PORT
//
// Every wait is bounded; any failure exits non-zero with a message.
import { chromium } from "playwright-core";

const base = process.argv[2];
if (!base) {
  console.error("usage: node kick.mjs BASE_URL");
  process.exit(2);
}
const WAIT = 10_000;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
let failed = false;
try {
  const page = await browser.newPage();
  await page.goto(base + "/", { timeout: WAIT });
  await page.evaluate(() => {
    window.rec = { connected: 0, errors: 0 };
    const es = new EventSource("/api/user/sse/connect?userId=kicked");
    es.addEventListener("CONNECTED", () => { window.rec.connected++; });
    es.onerror = () => { window.rec.errors++; };
    window.es = es;
  });
  await page.waitForFunction(() => window.rec.connected === 1, null, { timeout: WAIT });

  // The backend kicks the user, as it would on a ban or a logout.
  const r = await fetch(base + "/api/user/sse/disconnect?userId=kicked&reconnect=false", {
    method: "POST",
  });
  if (r.status !== 200) throw new Error(`disconnect answered ${r.status}: ${await r.text()}`);

  // The stream ends, the EventSource tries again after 1 s, gets 204: CLOSED.
  await page.waitForFunction(() => window.es.readyState === 2, null, { timeout: WAIT })
    .catch(async () => {
      const state = await page.evaluate(() => [window.es.readyState, window.rec]);
      throw new Error(`the EventSource never reached CLOSED: ${JSON.stringify(state)}`);
    });
  // And stays closed, several retry: hints later, with no new stream.
  await new Promise((done) => setTimeout(done, 3_000));
  const seen = await page.evaluate(() => ({ state: window.es.readyState, ...window.rec }));
  if (seen.state !== 2 || seen.connected !== 1) {
    throw new Error(`the EventSource came back: ${JSON.stringify(seen)}`);
  }
  const stats = await (await fetch(base + "/api/user/sse/stats")).json();
  if (stats.connections !== 0) throw new Error(`herald still holds ${stats.connections} streams`);
  console.log(`kick browser test: EventSource CLOSED after the kick and stayed closed (${seen.errors} error event)`);
} catch (e) {
  console.error(`kick browser test failed: ${e.message}`);
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
