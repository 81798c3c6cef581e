// Drives the built-in page (GET /) in headless Chromium through playwright-core:
// connect as a user, see CONNECTED and heartbeats (and the user in the "Who is
// online" panel), publish through the page and through the API, watch live
// stats, and see EventSource reconnect by itself with Last-Event-ID after the
// server ends the stream (the event published while it was away arrives, once). Run by tests/browser.rs with herald already started:
//
//   node page.mjs http://127.0.0.1:PORT SCREENSHOT.png
//
// Every wait is bounded; any failure exits non-zero with a message.
import { chromium } from "playwright-core";

const [base, screenshot] = process.argv.slice(2);
if (!base || !screenshot) {
  console.error("usage: node page.mjs BASE_URL SCREENSHOT.png");
  process.exit(2);
}
const WAIT = 10_000;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

async function api(path, body) {
  const r = await fetch(base + path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const j = await r.json();
  if (!r.ok) throw new Error(`${path}: ${r.status} ${JSON.stringify(j)}`);
  return j;
}

// The log entries the page shows, oldest first.
async function entries(page) {
  return page.$$eval("#log li", (lis) =>
    lis.map((li) => ({
      type: li.dataset.type,
      id: li.dataset.id || "",
      data: li.querySelector(".d").textContent,
    })).reverse());
}

async function waitFor(page, what, pred) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const list = await entries(page);
    if (pred(list)) return list;
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}; log: ${JSON.stringify(list, null, 1)}`);
    }
    await page.waitForTimeout(50);
  }
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  await page.goto(base + "/", { timeout: WAIT });
  if ((await page.title()) !== "herald") throw new Error("not the herald page");

  // 1. Connect as alice (topic news), listening for the event name "note".
  await page.fill("#user", "alice");
  await page.fill("#conn", "tab-1");
  await page.fill("#topics", "news");
  await page.fill("#names", "note");
  await page.click("#connect");
  await waitFor(page, "CONNECTED", (l) => l.some((e) => e.type === "CONNECTED" && e.data.includes('"userId":"alice"')));
  await page.waitForSelector("#state.open", { timeout: WAIT });
  // The "Who is online" panel (presence stream, no publisher auth here) shows alice.
  await page.waitForSelector('#online li[data-user="alice"]', { timeout: WAIT });

  // 2. Publish through the page, to alice.
  await page.fill("#pub-event", "note");
  await page.fill("#pub-data", "from the page");
  await page.selectOption("#pub-target", "users");
  await page.fill("#pub-names", "alice");
  await page.click("#publish");
  await page.waitForSelector("#pub-result.ok", { timeout: WAIT });
  let list = await waitFor(page, "the page's event", (l) => l.some((e) => e.type === "note" && e.data === "from the page"));
  const first = list.find((e) => e.data === "from the page");
  if (!/^\d+$/.test(first.id)) throw new Error("event shown without its id: " + JSON.stringify(first));

  // 3. Publish through the API, to the topic.
  const viaApi = await api("/api/broadcast", { event: "note", data: { via: "api" }, target: { topics: ["news"] } });
  list = await waitFor(page, "the API's event", (l) => l.some((e) => e.type === "note" && e.id === viaApi.id));
  if (list.find((e) => e.id === viaApi.id).data !== '{"via":"api"}') throw new Error("API event data wrong");

  // 4. Heartbeats arrive (herald runs with a short heartbeat interval here).
  await waitFor(page, "a HEARTBEAT", (l) => l.some((e) => e.type === "HEARTBEAT"));

  // 5. Live stats from the stats endpoint.
  await page.waitForFunction(() => Number(document.getElementById("stats-connections").textContent) >= 1, null, { timeout: WAIT });
  await page.waitForSelector("#stats-shards .bar", { timeout: WAIT });

  // 6. The server ends the stream; an event is published while the browser is
  //    away (to all: a fresh connect without Last-Event-ID would not get it);
  //    EventSource reconnects by itself, sends Last-Event-ID, gets it once.
  await api("/api/user/sse/disconnect?userId=alice&connectionId=tab-1");
  await waitFor(page, "the reconnect notice", (l) => l.some((e) => e.type === "reconnect"));
  const missed = await api("/api/broadcast", { event: "note", data: "while away", target: "all" });
  list = await waitFor(page, "the missed event after the reconnect", (l) => l.some((e) => e.id === missed.id));
  await page.waitForSelector("#state.open", { timeout: WAIT });
  const connects = list.filter((e) => e.type === "CONNECTED").length;
  if (connects !== 2) throw new Error(`expected 2 CONNECTED (first and reconnect), saw ${connects}`);
  const afterReconnect = list.slice(list.findIndex((e) => e.type === "reconnect"));
  if (afterReconnect.filter((e) => e.id === missed.id).length !== 1) throw new Error("missed event not exactly once");
  const ids = list.filter((e) => e.id).map((e) => BigInt(e.id));
  for (let i = 1; i < ids.length; i++) {
    if (ids[i] <= ids[i - 1]) throw new Error("ids not increasing: " + ids.join(","));
  }
  if ((await page.textContent("#reconnects")) !== "1") throw new Error("reconnect count not shown as 1");
  if (!(await page.textContent("#last-id")).includes(missed.id)) throw new Error("last id not shown");

  // 7. A publish of a name the page did not know yet shows once it is added.
  await page.fill("#pub-event", "alert");
  await page.fill("#pub-data", "new name");
  await page.selectOption("#pub-target", "all");
  await page.click("#publish");
  await waitFor(page, "the alert event", (l) => l.some((e) => e.type === "alert" && e.data === "new name"));

  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  await page.waitForTimeout(1200); // let the stats show a rate for the picture
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log("browser test passed; screenshot " + screenshot);
} catch (e) {
  failed = true;
  console.error("browser test failed: " + (e && e.stack ? e.stack : e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
