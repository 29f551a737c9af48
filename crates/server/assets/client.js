// PostCache browser client: one small ES module, no build step.
//
//   import { PostCache } from "/client.js";
//   const pc = new PostCache();                       // same origin; { baseUrl, transport: "ws", topics }
//   const post = await pc.get("42");                  // ETag revalidation, shared cache across tabs
//   const off = pc.subscribe((event) => { ... });     // one connection per browser, resumes after gaps
//
// Across the tabs of a browser, one tab leads (a Web Lock): it holds the only SSE or WebSocket
// connection and relays events to the other tabs over a BroadcastChannel. When it closes, another
// tab takes the lock and resumes from the last event id every tab has seen. The consistency token
// of the last write is kept and sent with reads (read-your-writes).

const TOKEN_KEY = "postcache:token";
const LAST_ID_KEY = "postcache:last-event-id";

export class PostCache {
  constructor({ baseUrl = "", transport = "sse", topics = ["posts"], channel = "postcache" } = {}) {
    this.baseUrl = baseUrl;
    this.transport = transport;
    this.topics = topics;
    this.cache = new Map(); // id -> { etag, post, tier }
    this.listeners = new Set();
    this.seen = new Set(); // event ids delivered here, so none is delivered twice
    this.seenOrder = [];
    this.closed = false;
    this.leading = false;
    this.channel = new BroadcastChannel(channel);
    this.channel.onmessage = (message) => this.#onChannel(message.data);
    this.lastTier = null;
  }

  // --- HTTP -------------------------------------------------------------------------------------

  get token() {
    return localStorage.getItem(TOKEN_KEY);
  }

  #remember(response) {
    const token = response.headers.get("x-postcache-token");
    if (token) localStorage.setItem(TOKEN_KEY, token);
  }

  async #fetch(path, init = {}) {
    const headers = new Headers(init.headers || {});
    if (this.token) headers.set("x-postcache-token", this.token);
    const response = await fetch(this.baseUrl + path, { ...init, headers });
    this.#remember(response);
    return response;
  }

  static async #error(response) {
    let detail = `${response.status}`;
    try {
      const body = await response.json();
      detail = `${body.error.code}: ${body.error.message}`;
    } catch (_) {}
    return new Error(detail);
  }

  /** A post, revalidated with its ETag (a 304 costs no body). Null when it does not exist. */
  async get(id) {
    const cached = this.cache.get(id);
    const headers = cached ? { "if-none-match": cached.etag } : {};
    const response = await this.#fetch(`/v1/posts/${encodeURIComponent(id)}`, { headers, cache: "no-store" });
    const tier = response.headers.get("x-postcache-tier");
    if (response.status === 304 && cached) {
      cached.tier = tier;
      return { ...cached.post, _tier: tier, _revalidated: true };
    }
    if (response.status === 404) {
      this.cache.delete(id);
      return null;
    }
    if (!response.ok) throw await PostCache.#error(response);
    const post = await response.json();
    this.#store(post, response.headers.get("etag"), tier, true);
    return { ...post, _tier: tier };
  }

  /** One feed page: { items, next_cursor, tier }. */
  async list({ authorId, tag, limit, cursor } = {}) {
    const query = new URLSearchParams();
    if (authorId) query.set("author_id", authorId);
    if (tag) query.set("tag", tag);
    if (limit) query.set("limit", String(limit));
    if (cursor) query.set("cursor", cursor);
    const response = await this.#fetch(`/v1/posts?${query}`, { cache: "no-store" });
    if (!response.ok) throw await PostCache.#error(response);
    const page = await response.json();
    for (const post of page.items) this.#store(post, `"${post.version}"`, null, false);
    return { ...page, tier: response.headers.get("x-postcache-tier") };
  }

  /** Publishes a post; the returned token makes this browser's next reads include it. */
  async create({ authorId, title, body, tags = [] }, { bearer } = {}) {
    const headers = { "content-type": "application/json" };
    if (bearer) headers.authorization = `Bearer ${bearer}`;
    const response = await this.#fetch("/v1/posts", {
      method: "POST",
      headers,
      body: JSON.stringify({ author_id: authorId, title, body, tags }),
    });
    if (!response.ok) throw await PostCache.#error(response);
    const post = await response.json();
    this.#store(post, response.headers.get("etag"), null, true);
    return post;
  }

  /** Counts a view (written back by the server in batches). */
  async view(id) {
    const response = await this.#fetch(`/v1/posts/${encodeURIComponent(id)}/views`, { method: "POST" });
    if (!response.ok) throw await PostCache.#error(response);
  }

  #store(post, etag, tier, share) {
    const known = this.cache.get(post.id);
    if (known && known.post.version > post.version) return;
    this.cache.set(post.id, { etag: etag || `"${post.version}"`, post, tier });
    if (share) this.channel.postMessage({ kind: "post", post, etag });
  }

  // --- realtime -----------------------------------------------------------------------------

  /** Calls `listener(event)` for every event of this client's topics; returns an unsubscribe. */
  subscribe(listener) {
    this.listeners.add(listener);
    if (!this.electing) {
      this.electing = true;
      this.#elect();
      this.channel.postMessage({ kind: "who-leads" });
    }
    return () => this.listeners.delete(listener);
  }

  /** Whether this tab holds the browser's connection. */
  get isLeader() {
    return this.leading;
  }

  /** Whether events flow: this tab's connection is open, or another tab leads. */
  get isLive() {
    return this.leading ? this.connected === true : this.followerOfLeader === true;
  }

  close() {
    this.closed = true;
    this.#disconnect();
    if (this.releaseLock) this.releaseLock();
    this.channel.close();
  }

  #elect() {
    // The lock is held for as long as this tab lives (or until close()).
    navigator.locks.request(`${this.channel.name}:leader`, () => {
      if (this.closed) return;
      this.leading = true;
      this.#connect(0);
      this.channel.postMessage({ kind: "leader" });
      return new Promise((resolve) => (this.releaseLock = resolve));
    });
  }

  #connect(attempt) {
    if (this.closed) return;
    const since = localStorage.getItem(LAST_ID_KEY);
    const query = new URLSearchParams({ topics: this.topics.join(",") });
    if (since) query.set("since", since);
    const retry = () => {
      this.#disconnect();
      // Exponential backoff with jitter, capped at 10 s.
      const delay = Math.min(10_000, 250 * 2 ** attempt) * (0.5 + Math.random() / 2);
      this.timer = setTimeout(() => this.#connect(attempt + 1), delay);
    };
    if (this.transport === "ws") {
      const url = new URL(`${this.baseUrl}/v1/ws?${query}`, location.href);
      url.protocol = url.protocol.replace("http", "ws");
      const socket = new WebSocket(url);
      socket.onopen = () => {
        attempt = 0;
        this.connected = true;
      };
      socket.onmessage = (message) => this.#deliver(JSON.parse(message.data), true);
      socket.onclose = () => !this.closed && retry();
      this.socket = socket;
    } else {
      const source = new EventSource(`${this.baseUrl}/v1/events?${query}`);
      source.onopen = () => {
        attempt = 0;
        this.connected = true;
      };
      source.onmessage = (message) => this.#deliver(JSON.parse(message.data), true);
      // EventSource reconnects by itself with Last-Event-ID; a closed one needs us.
      source.onerror = () => source.readyState === EventSource.CLOSED && retry();
      this.source = source;
    }
  }

  #disconnect() {
    this.connected = false;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    if (this.socket) this.socket.close();
    this.source = this.socket = null;
  }

  #deliver(event, fromLeader) {
    if (this.seen.has(event.id) && event.type !== "resync") return;
    this.seen.add(event.id);
    this.seenOrder.push(event.id);
    if (this.seenOrder.length > 1000) this.seen.delete(this.seenOrder.shift());
    localStorage.setItem(LAST_ID_KEY, event.id);
    if (event.post) this.#store(event.post, `"${event.version}"`, null, false);
    if (event.type === "post.deleted") this.cache.delete(event.post_id);
    if (fromLeader && this.leading) this.channel.postMessage({ kind: "event", event });
    for (const listener of this.listeners) listener(event);
  }

  #onChannel(message) {
    if (message.kind === "event") this.#deliver(message.event, false);
    if (message.kind === "post") this.#store(message.post, message.etag, null, false);
    if (message.kind === "leader" || message.kind === "here") this.followerOfLeader = true;
    // A new tab asks who leads; the leader answers.
    if (message.kind === "who-leads" && this.leading) this.channel.postMessage({ kind: "here" });
  }
}
