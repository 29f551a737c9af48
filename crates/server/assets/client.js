// PostCache browser client: one small ES module, no build step. Types: /client.d.ts.
//
//   import { PostCache } from "/client.js";
//   const pc = new PostCache({ bearer, onStateChange });   // same origin; or { baseUrl, transport: "ws" }
//   const post = await pc.get("42");                  // ETag revalidation, shared cache across tabs
//   await pc.update("42", { title: "new" }, { ifMatch: post.version });
//   const off = pc.subscribe((event) => { ... }, { topics: ["author:ann"] });
//
// Across the tabs of a browser, one tab leads (a Web Lock): it holds the only SSE or WebSocket
// connection, for the topics every tab asked for, and relays events to the other tabs over a
// BroadcastChannel. When it closes, another tab takes the lock and resumes from the last event id
// every tab has seen. Without Web Locks (a page over plain HTTP on a host that is not localhost)
// or BroadcastChannel, each tab keeps its own connection. The consistency token of the last write
// is kept per base URL and sent with reads (read-your-writes).

const DEFAULT_TOPICS = ["posts"];

/** localStorage, or nothing where it is not allowed (opaque origins, some privacy modes). */
const storage = {
  get(key) {
    try {
      return localStorage.getItem(key);
    } catch (_) {
      return null;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(key, value);
    } catch (_) {}
  },
};

export class PostCache {
  constructor({
    baseUrl = "",
    transport = "sse",
    topics = DEFAULT_TOPICS,
    channel,
    bearer = null,
    onStateChange = null,
  } = {}) {
    this.baseUrl = baseUrl.replace(/\/$/, "");
    // Everything kept in the browser is per service, so two instances never mix tokens or ids.
    const base = new URL(this.baseUrl || "/", location.href).href.replace(/\/$/, "");
    this.keys = { token: `postcache:${base}:token`, lastId: `postcache:${base}:last-event-id` };
    this.transport = transport;
    this.topics = topics;
    this.bearer = bearer;
    this.onStateChange = onStateChange;
    this.state = "idle";
    this.cache = new Map(); // id -> { etag, post, tier }
    this.subscriptions = new Map(); // listener -> topics
    this.tabTopics = new Map(); // the leader's view: tab -> topics it asked for
    this.tab = globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random()}`;
    this.seen = new Set(); // event ids delivered here, so none is delivered twice
    this.seenOrder = [];
    this.closed = false;
    this.leading = false;
    // One connection per tab when tabs cannot elect a leader or hear it.
    this.solo = !globalThis.navigator?.locks?.request || typeof BroadcastChannel !== "function";
    this.channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(channel || `postcache:${base}`) : null;
    if (this.channel) this.channel.onmessage = (message) => this.#onChannel(message.data);
    this.lastTier = null;
  }

  // --- HTTP -------------------------------------------------------------------------------------

  get token() {
    return storage.get(this.keys.token);
  }

  #remember(response) {
    const token = response.headers.get("x-postcache-token");
    if (token) storage.set(this.keys.token, token);
  }

  async #fetch(path, init = {}) {
    const headers = new Headers(init.headers || {});
    if (this.token) headers.set("x-postcache-token", this.token);
    const response = await fetch(this.baseUrl + path, { ...init, headers });
    this.#remember(response);
    return response;
  }

  /** Headers of a write: JSON, the bearer token (per call, else the instance's), If-Match. */
  #writeHeaders({ bearer, ifMatch } = {}) {
    const headers = { "content-type": "application/json" };
    const token = bearer ?? this.bearer;
    if (token) headers.authorization = `Bearer ${token}`;
    if (ifMatch !== undefined && ifMatch !== null) headers["if-match"] = `"${ifMatch}"`;
    return headers;
  }

  static async #error(response) {
    let detail = `${response.status}`;
    let code = null;
    try {
      const body = await response.json();
      code = body.error.code;
      detail = `${body.error.code}: ${body.error.message}`;
    } catch (_) {}
    const error = new Error(detail);
    error.status = response.status;
    error.code = code;
    return error;
  }

  #path(id) {
    return `/v1/posts/${encodeURIComponent(id)}`;
  }

  /** A post, revalidated with its ETag (a 304 costs no body). Null when it does not exist. */
  async get(id) {
    const cached = this.cache.get(id);
    const headers = cached ? { "if-none-match": cached.etag } : {};
    const response = await this.#fetch(this.#path(id), { headers, cache: "no-store" });
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
  async create({ authorId, title, body, tags = [] }, options = {}) {
    const response = await this.#fetch("/v1/posts", {
      method: "POST",
      headers: this.#writeHeaders(options),
      body: JSON.stringify({ author_id: authorId, title, body, tags }),
    });
    if (!response.ok) throw await PostCache.#error(response);
    const post = await response.json();
    this.#store(post, response.headers.get("etag"), null, true);
    return post;
  }

  /**
   * Changes a post's title, body or tags. With `ifMatch` (the version you read), a post someone
   * else changed since is not overwritten: the error's `status` is 412.
   */
  async update(id, { title, body, tags } = {}, options = {}) {
    const response = await this.#fetch(this.#path(id), {
      method: "PATCH",
      headers: this.#writeHeaders(options),
      body: JSON.stringify({ title, body, tags }),
    });
    if (!response.ok) throw await PostCache.#error(response);
    const post = await response.json();
    this.#store(post, response.headers.get("etag"), null, true);
    return post;
  }

  /** Deletes a post (`ifMatch` as for update). */
  async delete(id, options = {}) {
    const response = await this.#fetch(this.#path(id), {
      method: "DELETE",
      headers: this.#writeHeaders(options),
    });
    if (!response.ok) throw await PostCache.#error(response);
    this.cache.delete(id);
    this.channel?.postMessage({ kind: "gone", id });
  }

  /** Counts a view (written back by the server in batches). */
  async view(id) {
    const response = await this.#fetch(`${this.#path(id)}/views`, { method: "POST" });
    if (!response.ok) throw await PostCache.#error(response);
  }

  #store(post, etag, tier, share) {
    const known = this.cache.get(post.id);
    if (known && known.post.version > post.version) return;
    this.cache.set(post.id, { etag: etag || `"${post.version}"`, post, tier });
    if (share) this.channel?.postMessage({ kind: "post", post, etag });
  }

  // --- realtime -----------------------------------------------------------------------------

  /**
   * Calls `listener(event)` for every event of `topics` (default: the instance's) and every
   * `resync`; returns an unsubscribe.
   */
  subscribe(listener, { topics = this.topics } = {}) {
    this.subscriptions.set(listener, [...topics]);
    this.#topicsChanged();
    if (!this.electing) {
      this.electing = true;
      this.#elect();
    }
    return () => {
      this.subscriptions.delete(listener);
    };
  }

  /** Whether this tab holds the browser's connection. */
  get isLeader() {
    return this.leading;
  }

  /** Whether events flow: this tab's connection is open, or another tab leads. */
  get isLive() {
    return this.state === "live" || this.state === "following";
  }

  close() {
    this.closed = true;
    this.#disconnect();
    if (this.releaseLock) this.releaseLock();
    this.channel?.close();
    this.#setState("closed");
  }

  #setState(state) {
    if (this.state === state || (this.closed && state !== "closed")) return;
    this.state = state;
    if (this.onStateChange) this.onStateChange(state);
  }

  /** Every topic this tab's subscriptions ask for. */
  #ownTopics() {
    return [...new Set([...this.subscriptions.values()].flat())].sort();
  }

  /** Every topic the connection must carry: this tab's and, leading, every other tab's. */
  #wantedTopics() {
    const all = new Set(this.#ownTopics());
    if (this.leading) for (const topics of this.tabTopics.values()) for (const t of topics) all.add(t);
    return [...all].sort();
  }

  #topicsChanged() {
    if (this.leading) {
      // A topic the connection lacks: connect again for the union (resuming, so nothing is lost).
      const wanted = this.#wantedTopics().join(",");
      if (this.connectedTopics !== undefined && wanted !== this.connectedTopics) {
        this.#disconnect();
        this.#connect(0);
      }
    } else {
      this.channel?.postMessage({ kind: "topics", tab: this.tab, topics: this.#ownTopics() });
    }
  }

  #elect() {
    if (this.solo) {
      this.#lead();
      return;
    }
    this.#setState("connecting");
    this.channel.postMessage({ kind: "who-leads" });
    this.channel.postMessage({ kind: "topics", tab: this.tab, topics: this.#ownTopics() });
    // The lock is held for as long as this tab lives (or until close()).
    navigator.locks.request(`${this.channel.name}:leader`, () => {
      if (this.closed) return;
      this.#lead();
      this.channel.postMessage({ kind: "leader" });
      return new Promise((resolve) => (this.releaseLock = resolve));
    });
  }

  #lead() {
    this.leading = true;
    this.#connect(0);
  }

  #connect(attempt) {
    if (this.closed) return;
    this.#setState(attempt === 0 ? "connecting" : "reconnecting");
    const since = storage.get(this.keys.lastId);
    this.connectedTopics = this.#wantedTopics().join(",");
    const query = new URLSearchParams({ topics: this.connectedTopics || DEFAULT_TOPICS.join(",") });
    if (since) query.set("since", since);
    const retry = () => {
      this.#disconnect();
      this.#setState("reconnecting");
      // Exponential backoff with jitter, capped at 10 s.
      const delay = Math.min(10_000, 250 * 2 ** attempt) * (0.5 + Math.random() / 2);
      this.timer = setTimeout(() => this.#connect(attempt + 1), delay);
    };
    const opened = () => {
      attempt = 0;
      this.#setState("live");
    };
    if (this.transport === "ws") {
      const url = new URL(`${this.baseUrl}/v1/ws?${query}`, location.href);
      url.protocol = url.protocol.replace("http", "ws");
      const socket = new WebSocket(url);
      socket.onopen = opened;
      socket.onmessage = (message) => this.#deliver(JSON.parse(message.data), true);
      socket.onclose = () => socket === this.socket && !this.closed && retry();
      this.socket = socket;
    } else {
      const source = new EventSource(`${this.baseUrl}/v1/events?${query}`);
      source.onopen = opened;
      source.onmessage = (message) => this.#deliver(JSON.parse(message.data), true);
      // EventSource reconnects by itself with Last-Event-ID; a closed one needs us.
      source.onerror = () => {
        if (source !== this.source) return;
        if (source.readyState === EventSource.CLOSED) retry();
        else this.#setState("reconnecting");
      };
      this.source = source;
    }
  }

  #disconnect() {
    clearTimeout(this.timer);
    const { source, socket } = this;
    this.source = this.socket = null;
    if (source) source.close();
    if (socket) socket.close();
  }

  /** Whether `event` belongs to `topics` (`posts`, `author:{id}`, `post:{id}`). */
  #matches(event, topics) {
    if (event.type === "resync") return true;
    // A delete carries no post: its author is known only if the post was seen here.
    const author = event.post?.author_id ?? this.cache.get(event.post_id)?.post.author_id;
    return topics.some(
      (t) =>
        t === "posts" ||
        t === `post:${event.post_id}` ||
        (t.startsWith("author:") && (author === undefined || t === `author:${author}`)),
    );
  }

  #deliver(event, fromLeader) {
    if (this.seen.has(event.id) && event.type !== "resync") return;
    this.seen.add(event.id);
    this.seenOrder.push(event.id);
    if (this.seenOrder.length > 1000) this.seen.delete(this.seenOrder.shift());
    storage.set(this.keys.lastId, event.id);
    if (fromLeader && this.leading && !this.solo) this.channel?.postMessage({ kind: "event", event });
    if (event.post) this.#store(event.post, `"${event.version}"`, null, false);
    for (const [listener, topics] of this.subscriptions) {
      if (this.#matches(event, topics)) listener(event);
    }
    if (event.type === "post.deleted") this.cache.delete(event.post_id);
  }

  #onChannel(message) {
    if (message.kind === "event" && !this.leading) this.#deliver(message.event, false);
    if (message.kind === "post") this.#store(message.post, message.etag, null, false);
    if (message.kind === "gone") this.cache.delete(message.id);
    if ((message.kind === "leader" || message.kind === "here") && !this.leading) {
      this.#setState("following");
      // A new leader learns what this tab listens to.
      this.channel.postMessage({ kind: "topics", tab: this.tab, topics: this.#ownTopics() });
    }
    if (message.kind === "topics" && this.leading) {
      this.tabTopics.set(message.tab, message.topics);
      this.#topicsChanged();
    }
    // A new tab asks who leads; the leader answers.
    if (message.kind === "who-leads" && this.leading) this.channel.postMessage({ kind: "here" });
  }
}
