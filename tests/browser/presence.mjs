// The built-in page's "Who is online" panel in headless Chromium: the page reads
// GET /api/presence/stream with fetch() and the publisher token (EventSource
// cannot send an Authorization header). Without the token the panel says so;
// with it, a user online before the stream opened is found by the page's own
// POST /api/presence, users coming online (the page's own connect, a client of
// the test) appear, and each disappears once its last connection has ended and
// the linger has passed. Run by tests/browser.rs with herald started with a
// publisher token and --presence-linger 1s:
//
//   node presence.mjs http://127.0.0.1:PORT PUBLISHER_TOKEN
//
// Every wait is bounded; any failure exits non-zero with a message.
import http from "node:http";
import { chromium } from "playwright-core";

const [base, token] = process.argv.slice(2);
if (!base || !token) {
  console.error("usage: node presence.mjs BASE_URL PUBLISHER_TOKEN");
  process.exit(2);
}
const WAIT = 10_000;
const LINGER_MS = 1_000;

// A subscriber outside the browser: resolves once its CONNECTED arrived;
// `close()` ends the connection (the socket is destroyed).
function subscribe(userId) {
  return new Promise((resolve, reject) => {
    const url = `${base}/api/user/sse/connect?userId=${encodeURIComponent(userId)}`;
    const req = http.get(url, (res) => {
      if (res.statusCode !== 200) {
        reject(new Error(`${userId}: connect answered ${res.statusCode}`));
        res.resume();
        return;
      }
      let seen = "";
      const onData = (chunk) => {
        seen += chunk;
        if (seen.includes("event: CONNECTED")) {
          res.off("data", onData);
          res.resume();
          clearTimeout(timer);
          resolve({ close: () => req.destroy() });
        }
      };
      res.setEncoding("utf8");
      res.on("data", onData);
    });
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`${userId}: no CONNECTED within ${WAIT} ms`));
    }, WAIT);
    req.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

const chip = (user) => `#online li[data-user="${user}"]`;

// The users the panel shows and its count, for failure messages.
async function panel(page) {
  return page.evaluate(() => ({
    users: [...document.querySelectorAll("#online li")].map((li) => li.textContent),
    count: document.getElementById("online-count").textContent,
    state: document.getElementById("presence-state").textContent,
    error: document.getElementById("presence-error").textContent,
  }));
}

async function shown(page, user) {
  await page.waitForSelector(chip(user), { timeout: WAIT }).catch(async () => {
    throw new Error(`${user} never shown online; panel: ${JSON.stringify(await panel(page))}`);
  });
}

async function gone(page, user) {
  await page.waitForSelector(chip(user), { state: "detached", timeout: WAIT }).catch(async () => {
    throw new Error(`${user} still shown online; panel: ${JSON.stringify(await panel(page))}`);
  });
}

async function count(page, n) {
  await page.waitForFunction((n) => document.getElementById("online-count").textContent === String(n), n, { timeout: WAIT })
    .catch(async () => {
      throw new Error(`the count never showed ${n}; panel: ${JSON.stringify(await panel(page))}`);
    });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const clients = [];
let failed = false;
try {
  // erin is online before the page opens: no online event will announce her.
  const erin = await subscribe("erin");
  clients.push(erin);

  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(base + "/", { timeout: WAIT });

  // 1. Without the publisher token the stream is refused, and the panel says so.
  await page.waitForSelector("#presence-state.error", { timeout: WAIT });
  const refused = await page.textContent("#presence-error");
  if (!refused.includes("publisher token")) throw new Error(`unexpected refusal text: ${refused}`);

  // 2. With it (typed into the publish form) the stream opens; the page names
  //    erin (its userId field), so it asks for her and shows her.
  await page.fill("#user", "erin");
  await page.fill("#pub-token", token);
  await page.waitForSelector("#presence-state.open", { timeout: WAIT }).catch(async () => {
    throw new Error(`the presence stream never opened; panel: ${JSON.stringify(await panel(page))}`);
  });
  await shown(page, "erin");
  await count(page, 1);

  // 3. The page's own connect as carol: carol comes online.
  await page.fill("#user", "carol");
  await page.click("#connect");
  await page.waitForSelector("#state.open", { timeout: WAIT });
  await shown(page, "carol");

  // 4. A client of the test connects as dave: dave comes online; the id is text.
  const dave = await subscribe("dave");
  clients.push(dave);
  await shown(page, "dave");
  await count(page, 3);
  const markup = await page.$eval(chip("dave"), (li) => [li.textContent, li.children.length]);
  if (markup[0] !== "dave" || markup[1] !== 0) throw new Error(`dave's entry is not plain text: ${markup}`);

  // 5. dave disconnects: gone once the linger (1 s) has passed, not before.
  const left = Date.now();
  dave.close();
  await gone(page, "dave");
  const after = Date.now() - left;
  if (after < LINGER_MS - 200) throw new Error(`dave went offline after ${after} ms, within the linger`);
  await count(page, 2);

  // 6. erin disconnects; then the page closes carol's stream.
  erin.close();
  await gone(page, "erin");
  await page.click("#disconnect");
  await gone(page, "carol");
  await count(page, 0);
  const end = await panel(page);
  if (end.state !== "open") throw new Error(`the presence stream did not stay open: ${JSON.stringify(end)}`);

  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log(`presence browser test passed (dave offline ${after} ms after his disconnect)`);
} catch (e) {
  failed = true;
  console.error("presence browser test failed: " + (e && e.stack ? e.stack : e));
} finally {
  for (const c of clients) c.close();
  await browser.close();
}
process.exit(failed ? 1 : 0);
