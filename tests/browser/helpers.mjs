// What the browser tests share: the servers under test (started by
// crates/postcache/tests/it/browser.rs), headless Chromium, and helpers over the demo page.
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

/** The service under test; it requires the API token BEARER for writes. */
export const BASE = process.env.BASE_URL;
/** A second service, which allows BASE's pages cross-origin (CORS). */
export const SECOND = process.env.SECOND_URL;
export const BEARER = process.env.BEARER;
export const ARTIFACTS = process.env.ARTIFACTS || "artifacts";

export const launch = () =>
  chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });

let counter = 0;
export const unique = (what) => `${what} ${process.pid}-${Date.now()}-${++counter}`;
/** An author id (letters, digits, `_.-`). */
export const uniqueAuthor = (what) => `${what}-${process.pid}-${Date.now()}-${++counter}`;

export async function openDemo(context) {
  const page = await context.newPage();
  await page.goto(`${BASE}/`);
  await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("live"));
  await page.waitForFunction(() => window.postcache.isLive, null, { timeout: 20000 });
  // Record every event this tab's client delivers, to check that none comes twice.
  await page.evaluate(() => {
    window.__events = [];
    window.__arrivals = {};
    window.postcache.subscribe((e) => {
      window.__events.push(e.id);
      if (e.post) window.__arrivals[e.post.title] = Date.now();
    });
  });
  return page;
}

/** A page of BASE's origin with nothing on it (the client imported by hand). */
export async function blankPage(context) {
  const page = await context.newPage();
  await page.goto(`${BASE}/healthz`);
  return page;
}

export async function publishFrom(page, title, token = BEARER) {
  await page.fill('input[name="title"]', title);
  await page.fill('textarea[name="body"]', "written in the browser test");
  await page.fill('input[name="token"]', token);
  await page.click('button[type="submit"]');
}

export async function publishByApi(title, author = "api", base = BASE) {
  const response = await fetch(`${base}/v1/posts`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${BEARER}` },
    body: JSON.stringify({ author_id: author, title, body: "written behind the page's back" }),
  });
  assert.equal(response.status, 201);
  return response.json();
}

// Polls every 25 ms (locator waits back off to 500 ms; animation frames pause in background pages).
export const shows = (page, title, timeout = 10000) =>
  page.waitForFunction((t) => [...document.querySelectorAll("h3")].some((h) => h.textContent === t), title, {
    polling: 25,
    timeout,
  });
