// Types of the PostCache browser client (/client.js), served at /client.d.ts.
//
//   // @deno-types="https://your-host/client.d.ts"  or copy it next to your code:
//   import { PostCache } from "https://your-host/client.js";

/** A post as the API returns it. */
export interface Post {
  id: string;
  author_id: string;
  title: string;
  body: string;
  tags: string[];
  version: number;
  views: number;
  created_at: string;
  updated_at: string;
}

/** What `get` returns: the post, which tier served it, and whether a 304 revalidated it. */
export type ReadPost = Post & { _tier: string | null; _revalidated?: true };

/** One feed page, newest first. */
export interface FeedPage {
  items: Post[];
  next_cursor: string | null;
  /** Which tier served the page's list of ids. */
  tier: string | null;
}

/** One realtime event (`resync`: events were lost; read again what you show). */
export interface PostEvent {
  id: string;
  type: "post.created" | "post.updated" | "post.deleted" | "post.views" | "resync";
  post: Post | null;
  post_id: string;
  version: number;
  ts: string;
}

/** A topic: every post, one author's, or one post's. */
export type Topic = "posts" | `author:${string}` | `post:${string}`;

/**
 * Where the realtime connection stands: `connecting` (first attempt), `live` (this tab's
 * connection is open), `following` (another tab of this browser holds it and relays events),
 * `reconnecting` (lost; retrying with backoff, resuming from the last event), `closed`.
 */
export type ConnectionState = "idle" | "connecting" | "live" | "following" | "reconnecting" | "closed";

export interface PostCacheOptions {
  /** The service's URL; default: this page's origin. Tokens and event ids are kept per URL. */
  baseUrl?: string;
  /** Realtime transport; default `sse`. */
  transport?: "sse" | "ws";
  /** Topics of `subscribe` calls that name none; default `["posts"]`. */
  topics?: Topic[];
  /** BroadcastChannel and Web Lock name shared by the tabs; default from the base URL. */
  channel?: string;
  /** API token sent as `Authorization: Bearer` with writes (when the service requires one). */
  bearer?: string | null;
  /** Called on every change of `state`. */
  onStateChange?: ((state: ConnectionState) => void) | null;
}

/** Options of a write. */
export interface WriteOptions {
  /** Bearer token for this call (else the instance's `bearer`). */
  bearer?: string | null;
  /** Only if the post is still at this version (`If-Match`); else the error's `status` is 412. */
  ifMatch?: number | null;
}

/** A failed call: the HTTP status and the API's error code. */
export interface PostCacheError extends Error {
  status: number;
  code: string | null;
}

export class PostCache {
  constructor(options?: PostCacheOptions);
  readonly baseUrl: string;
  readonly transport: "sse" | "ws";
  topics: Topic[];
  bearer: string | null;
  onStateChange: ((state: ConnectionState) => void) | null;
  /** Where the realtime connection stands. */
  readonly state: ConnectionState;
  /** The consistency token of this browser's last write to this service (read-your-writes). */
  readonly token: string | null;
  /** Whether this tab holds the browser's connection. */
  readonly isLeader: boolean;
  /** Whether events flow (`live` or `following`). */
  readonly isLive: boolean;

  /** A post (ETag-revalidated); null when it does not exist. */
  get(id: string): Promise<ReadPost | null>;
  /** One feed page. */
  list(query?: { authorId?: string; tag?: string; limit?: number; cursor?: string }): Promise<FeedPage>;
  /** Publishes a post. */
  create(post: { authorId: string; title: string; body: string; tags?: string[] }, options?: WriteOptions): Promise<Post>;
  /** Changes a post's title, body or tags. */
  update(id: string, patch: { title?: string; body?: string; tags?: string[] }, options?: WriteOptions): Promise<Post>;
  /** Deletes a post. */
  delete(id: string, options?: WriteOptions): Promise<void>;
  /** Counts a view. */
  view(id: string): Promise<void>;
  /** Calls `listener` for the events of `topics` (and every `resync`); returns an unsubscribe. */
  subscribe(listener: (event: PostEvent) => void, options?: { topics?: Topic[] }): () => void;
  /** Closes the connection (another tab takes over) and the channel. */
  close(): void;
}
