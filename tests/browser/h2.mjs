// Ten EventSources from one page over HTTP/2 in headless Chromium: over
// HTTP/1.1 a browser opens at most 6 connections per origin, so the seventh
// EventSource would wait; over h2 all ten share one connection. Run by
// tests/browser.rs with herald already serving HTTPS (a test certificate, hence
// --ignore-certificate-errors):
//
//   node h2.mjs https://localhost:PORT
//
// Every wait is bounded; any failure exits non-zero with a message.
import { chromium } from "playwright-core";

const base = process.argv[2];
if (!base) {
  console.error("usage: node h2.mjs BASE_URL");
  process.exit(2);
}
const WAIT = 10_000;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--ignore-certificate-errors",
  ],
});
let failed = false;
try {
  const page = await browser.newPage({ ignoreHTTPSErrors: true });
  await page.goto(base + "/", { timeout: WAIT });
  const protocol = await page.evaluate(
    () => performance.getEntriesByType("navigation")[0].nextHopProtocol,
  );
  if (protocol !== "h2") throw new Error(`the page came over ${protocol}, not h2`);

  // Ten streams; each records CONNECTED and the events it receives.
  await page.evaluate(() => {
    window.got = [];
    window.sources = [];
    for (let i = 0; i < 10; i++) {
      const rec = { connected: false, data: [] };
      window.got.push(rec);
      const es = new EventSource(`/api/user/sse/connect?userId=tab-${i}`);
      es.addEventListener("CONNECTED", () => { rec.connected = true; });
      es.addEventListener("message", (e) => rec.data.push(e.data));
      window.sources.push(es);
    }
  });
  await page.waitForFunction(() => window.got.every((r) => r.connected), null, { timeout: WAIT })
    .catch(async () => {
      const n = await page.evaluate(() => window.got.filter((r) => r.connected).length);
      throw new Error(`only ${n} of 10 EventSources connected`);
    });

  // One broadcast, published from the page: every stream receives it.
  const status = await page.evaluate(async () => {
    const r = await fetch("/api/broadcast", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ data: "to every tab", target: "all" }),
    });
    return r.status;
  });
  if (status !== 202) throw new Error(`publish answered ${status}`);
  await page.waitForFunction(
    () => window.got.every((r) => r.data.includes("to every tab")), null, { timeout: WAIT },
  ).catch(async () => {
    const n = await page.evaluate(() => window.got.filter((r) => r.data.length > 0).length);
    throw new Error(`only ${n} of 10 EventSources received the event`);
  });
  console.log("h2 browser test: 10 of 10 EventSources connected and received the event over h2");
} catch (e) {
  console.error(`h2 browser test failed: ${e.message}`);
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
