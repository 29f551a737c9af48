// The browser client's API in headless Chromium: writes with the API token, update and delete,
// per-call topics (across tabs too), state per service, the fallback without Web Locks and
// BroadcastChannel, connection-state callbacks, and its TypeScript declarations. SECOND_URL is a
// second service that allows BASE_URL's pages (CORS) and ends realtime streams after 3 s.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import {
  BASE, BEARER, SECOND, blankPage, launch, openDemo, publishByApi, publishFrom, shows, unique, uniqueAuthor,
} from "./helpers.mjs";

let browser;
before(async () => (browser = await launch()));
after(async () => browser && (await browser.close()));

test("the demo page publishes with the API token in its field, and says what is missing without it", async () => {
  const context = await browser.newContext();
  const page = await openDemo(context);
  const refused = unique("needs the token");
  await publishFrom(page, refused, "");
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("API token"));
  const status = await page.textContent("#status");
  assert.match(status, /not published: unauthorized/);
  const title = unique("with the token");
  await publishFrom(page, title);
  await shows(page, title);
  await context.close();
});

test("update and delete through the client reach another browser; a stale If-Match is refused", async () => {
  const alice = await browser.newContext();
  const bob = await browser.newContext();
  const writer = await openDemo(alice);
  const reader = await openDemo(bob);
  const title = unique("to be changed");
  const post = await writer.evaluate(
    ([title, bearer]) => window.postcache.create({ authorId: "ann", title, body: "v1" }, { bearer }),
    [title, BEARER],
  );
  await shows(reader, title);
  const changed = unique("changed");
  const updated = await writer.evaluate(
    ([id, title, version, bearer]) => window.postcache.update(id, { title }, { ifMatch: version, bearer }),
    [post.id, changed, post.version, BEARER],
  );
  assert.equal(updated.version, post.version + 1);
  await shows(reader, changed);
  const stale = await writer.evaluate(
    ([id, version, bearer]) =>
      window.postcache.update(id, { title: "lost" }, { ifMatch: version, bearer }).then(
        () => null,
        (e) => ({ status: e.status, code: e.code }),
      ),
    [post.id, post.version, BEARER],
  );
  assert.deepEqual(stale, { status: 412, code: "precondition_failed" });
  await writer.evaluate(([id, bearer]) => window.postcache.delete(id, { bearer }), [post.id, BEARER]);
  await reader.waitForFunction((id) => !document.getElementById(`post-${id}`), post.id, { timeout: 10000 });
  assert.equal(await writer.evaluate((id) => window.postcache.get(id), post.id), null);
  await alice.close();
  await bob.close();
});

test("each subscription gets its own topics, also when another tab holds the connection", async () => {
  const context = await browser.newContext();
  const [first, second] = [await blankPage(context), await blankPage(context)];
  const ann = uniqueAuthor("ann");
  const bob = uniqueAuthor("bob");
  const channel = unique("topics").replaceAll(" ", "-");
  // Tab one leads and listens to ann (and, in a second subscription, every post); tab two
  // follows and listens to bob alone: the leader's connection must carry bob's posts too.
  const listen = async (page, subscriptions) => {
    await page.evaluate(
      async ([channel, subscriptions]) => {
        const { PostCache } = await import("/client.js");
        const pc = new PostCache({ channel });
        window.pc = pc;
        window.got = {};
        for (const topic of subscriptions) {
          window.got[topic] = [];
          pc.subscribe((e) => window.got[topic].push(e.post?.author_id), { topics: [topic] });
        }
      },
      [channel, subscriptions],
    );
    await page.waitForFunction(() => window.pc.isLive, null, { timeout: 20000 });
  };
  await listen(first, [`author:${ann}`, "posts"]);
  await listen(second, [`author:${bob}`]);
  assert.equal(await first.evaluate(() => window.pc.isLeader), true);
  assert.equal(await second.evaluate(() => window.pc.state), "following");
  // The leader connects again for bob's topic; wait until a post of bob's comes through it.
  const probe = async () => {
    await publishByApi(unique("for bob"), bob);
    return second
      .waitForFunction((bob) => window.got[`author:${bob}`].length > 0, bob, { timeout: 2000 })
      .then(() => true, () => false);
  };
  let through = false;
  for (let i = 0; i < 10 && !through; i++) through = await probe();
  assert.ok(through, "bob's posts reach the tab that asked for them");
  await publishByApi(unique("for ann"), ann);
  await first.waitForFunction((ann) => window.got[`author:${ann}`].length === 1, ann, { timeout: 10000 });
  await first.waitForFunction((bob) => window.got.posts.includes(bob), bob, { timeout: 10000 });
  const got = await first.evaluate(() => window.got);
  assert.deepEqual(got[`author:${ann}`], [ann], "only ann's posts for ann's subscription");
  const seenBySecond = await second.evaluate(() => window.got);
  assert.ok(seenBySecond[`author:${bob}`].every((a) => a === bob), "only bob's posts for bob's subscription");
  await context.close();
});

test("tokens and event positions are kept per service; a second service is reached cross-origin", async () => {
  const context = await browser.newContext();
  const page = await blankPage(context);
  const result = await page.evaluate(
    async ([second, bearer]) => {
      const { PostCache } = await import("/client.js");
      const here = new PostCache({ bearer });
      const there = new PostCache({ baseUrl: second, bearer });
      const a = await here.create({ authorId: "ann", title: "here", body: "b" });
      const b = await there.create({ authorId: "ann", title: "there", body: "b" });
      const read = await there.get(b.id);
      const keys = Object.keys(localStorage).filter((k) => k.endsWith(":token")).sort();
      return { keys, here: here.token, there: there.token, a: a.id, read: read.title };
    },
    [SECOND, BEARER],
  );
  assert.equal(result.keys.length, 2, `one token per service: ${result.keys}`);
  assert.ok(result.keys.some((k) => k.includes(new URL(SECOND).host)), `${result.keys}`);
  assert.ok(result.here && result.there && result.here !== result.there, "each service's own token");
  assert.equal(result.read, "there");
  await context.close();
});

test("without Web Locks and BroadcastChannel every tab keeps a connection of its own", async () => {
  const context = await browser.newContext();
  // As a page over plain HTTP on a host that is not localhost sees it (no secure context).
  await context.addInitScript(() => {
    Object.defineProperty(Navigator.prototype, "locks", { get: () => undefined, configurable: true });
    delete window.BroadcastChannel;
  });
  const tabs = [await openDemo(context), await openDemo(context)];
  for (const tab of tabs) assert.equal(await tab.evaluate(() => window.postcache.isLeader), true);
  const title = unique("to every tab");
  await publishByApi(title);
  for (const tab of tabs) await shows(tab, title);
  await context.close();
});

test("connection-state callbacks follow the connection when the service ends it", async () => {
  const context = await browser.newContext();
  const page = await blankPage(context);
  const channel = unique("states").replaceAll(" ", "-");
  // The second service ends every stream after a few seconds (as a rolling restart does).
  await page.evaluate(
    async ([channel, second]) => {
      const { PostCache } = await import("/client.js");
      window.states = [];
      window.pc = new PostCache({ baseUrl: second, channel, onStateChange: (s) => window.states.push(s) });
      window.pc.subscribe(() => {});
    },
    [channel, SECOND],
  );
  await page.waitForFunction(() => window.pc.state === "live", null, { timeout: 20000 });
  await page.waitForFunction(() => window.states.includes("reconnecting"), null, { timeout: 20000 });
  await page.waitForFunction(() => window.pc.state === "live", null, { timeout: 30000 });
  await page.evaluate(() => window.pc.close());
  const states = await page.evaluate(() => window.states);
  assert.deepEqual(states.slice(0, 4), ["connecting", "live", "reconnecting", "live"]);
  assert.equal(states.at(-1), "closed");
  await context.close();
});

test("client.d.ts is served, declares every method of the client, and a use of it type-checks", async () => {
  const served = await (await fetch(`${BASE}/client.d.ts`)).text();
  const types = readFileSync(new URL("../../crates/server/assets/client.d.ts", import.meta.url), "utf8");
  assert.equal(served, types);
  const client = readFileSync(new URL("../../crates/server/assets/client.js", import.meta.url), "utf8");
  const body = client.slice(client.indexOf("export class PostCache"));
  const methods = [...body.matchAll(/^ {2}(?:async |get )?([a-z]\w*)\(/gm)]
    .map((m) => m[1])
    .filter((name) => name !== "constructor");
  assert.ok(methods.length >= 10, `${methods}`);
  for (const name of methods) assert.match(types, new RegExp(`\\b${name}[(:?]`), `client.d.ts lacks ${name}`);
  // tsc finds client.d.ts next to client.js; --strict fails on any type error in the example.
  execFileSync(
    new URL("./node_modules/.bin/tsc", import.meta.url).pathname,
    ["--noEmit", "--strict", "--target", "es2022", "--module", "nodenext", "--lib", "es2022,dom",
      new URL("./usage.ts", import.meta.url).pathname],
    { stdio: "pipe" },
  );
});
