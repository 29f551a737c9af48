// The demo page and /client.js in headless Chromium (Debian's, driven by playwright-core).
// Run by crates/postcache/tests/it/browser.rs against a real `postcache serve` (BASE_URL).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { ARTIFACTS, launch, openDemo, publishByApi, publishFrom, shows, unique } from "./helpers.mjs";

let browser;
before(async () => (browser = await launch()));
after(async () => browser && (await browser.close()));

test("a published post is still there after a reload", async () => {
  const context = await browser.newContext();
  const page = await openDemo(context);
  const title = unique("survives reload");
  await publishFrom(page, title);
  await shows(page, title);
  await page.reload();
  await shows(page, title, 20000);
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: `${ARTIFACTS}/demo.png`, fullPage: true });
  await context.close();
});

test("another tab shows a new post within a second, without reloading", async () => {
  const context = await browser.newContext();
  const writer = await openDemo(context);
  const reader = await openDemo(context);
  const title = unique("seen in the other tab");
  await publishFrom(writer, title);
  await shows(reader, title, 10000);
  const leaders = await Promise.all([writer, reader].map((p) => p.evaluate(() => window.postcache.isLeader)));
  assert.equal(leaders.filter(Boolean).length, 1, "one tab holds the browser's connection");
  await context.close();
});

test("another user sees a new post within a second; delivery latency is measured", async () => {
  const alice = await browser.newContext();
  const bob = await browser.newContext();
  const writer = await openDemo(alice);
  const reader = await openDemo(bob);
  // One warm-up event: a fresh renderer's first delivery includes its start-up work.
  const warmup = unique("warm-up");
  await publishByApi(warmup);
  await shows(reader, warmup, 20000);
  const delays = [];
  for (let i = 0; i < 20; i++) {
    const title = unique("seen by another user");
    const started = Date.now();
    await publishByApi(title);
    await shows(reader, title, 10000);
    delays.push((await reader.evaluate((t) => window.__arrivals[t], title)) - started);
  }
  await shows(writer, (await publishByApi(unique("and by the writer"))).title, 10000);
  console.log(`delivery per publish (ms): ${delays.join(" ")}`);
  delays.sort((a, b) => a - b);
  console.log(`delivery (publish request to the event in another browser's page): p50 ${delays[10]} ms, max ${delays[19]} ms`);
  await alice.close();
  await bob.close();
});

test("events missed while offline arrive after reconnecting, none twice", async () => {
  const context = await browser.newContext();
  const page = await openDemo(context);
  await context.setOffline(true);
  await page.waitForTimeout(300); // let the connection notice it is gone
  const missed = [unique("missed 1"), unique("missed 2")];
  for (const title of missed) await publishByApi(title);
  await context.setOffline(false);
  for (const title of missed) await shows(page, title, 20_000);
  const ids = await page.evaluate(() => window.__events);
  assert.equal(new Set(ids).size, ids.length, `no event delivered twice: ${ids}`);
  await context.close();
});

test("when the tab holding the connection closes, another takes over", async () => {
  const context = await browser.newContext();
  const first = await openDemo(context);
  const second = await openDemo(context);
  assert.equal(await first.evaluate(() => window.postcache.isLeader), true);
  assert.equal(await second.evaluate(() => window.postcache.isLeader), false);
  await first.close();
  await second.waitForFunction(() => window.postcache.isLeader, null, { timeout: 20000 });
  const title = unique("after the leader left");
  await publishByApi(title);
  await shows(second, title, 20000);
  await context.close();
});
