// Opens the admin dashboard in Debian's headless Chromium, reports the
// connection count it shows, waits for it to grow by <delta> (the Rust test
// connects clients meanwhile), and saves a screenshot.
//
//   node tests/browser/dashboard.mjs <dashboard url> <delta> <screenshot.png> [api key]
//
// Prints "ready <count>" once the page shows live data, then "seen <count>".
import { chromium } from "playwright-core";

const [url, delta, screenshot, apiKey] = process.argv.slice(2);
const fail = (message) => { console.error("dashboard test: " + message); process.exit(1); };
if (!url || !delta || !screenshot) fail("usage: dashboard.mjs <url> <delta> <screenshot.png> [api key]");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const timer = setTimeout(() => fail("gave up after 60 s"), 60_000);
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  if (apiKey) {
    // The page asks for the key once, then keeps it for the session.
    await page.waitForSelector("#login input", { state: "visible", timeout: 10_000 });
    await page.fill("#key", apiKey);
    await page.click("#login button");
  }
  const count = async () => Number((await page.textContent("#connections")).replace(/[^0-9.]/g, ""));
  await page.waitForFunction(() => /^[0-9]/.test(document.getElementById("connections").textContent), null, { timeout: 10_000 });
  const before = await count();
  console.log("ready " + before);
  const want = before + Number(delta);
  await page.waitForFunction((want) => Number(document.getElementById("connections").textContent) >= want, want, { timeout: 30_000, polling: 200 });
  // One more refresh so the chart and tables carry the new connections too.
  await page.waitForTimeout(2_500);
  await page.screenshot({ path: screenshot, fullPage: true });
  if (errors.length) fail("page errors: " + errors.join("; "));
  console.log("seen " + await count());
} catch (e) {
  fail(String(e));
} finally {
  clearTimeout(timer);
  await browser.close();
}
