// A use of the browser client as an application would write it, type-checked against
// crates/server/assets/client.d.ts by client.test.mjs (tsc --strict). Never run.
import { PostCache, type ConnectionState, type PostEvent } from "../../crates/server/assets/client.js";

export async function example(): Promise<string[]> {
  const states: ConnectionState[] = [];
  const pc = new PostCache({ transport: "ws", bearer: "token", onStateChange: (s) => states.push(s) });
  const post = await pc.create({ authorId: "ann", title: "t", body: "b", tags: ["x"] });
  const updated = await pc.update(post.id, { title: "u" }, { ifMatch: post.version });
  const read = await pc.get(updated.id);
  const page = await pc.list({ authorId: "ann", limit: 10 });
  const titles = page.items.map((p) => p.title);
  if (read) titles.push(`${read.title} from ${read._tier ?? "?"}`);
  const off = pc.subscribe((event: PostEvent) => titles.push(event.type), { topics: ["author:ann", "post:1"] });
  // @ts-expect-error: not a topic
  pc.subscribe(() => {}, { topics: ["everything"] });
  // @ts-expect-error: ifMatch is a version number
  await pc.delete(post.id, { ifMatch: "1" });
  off();
  pc.close();
  return titles.concat(states);
}
