// The peer of `postcache bench --mode socketio`: a Socket.IO 4 server with its default in-memory
// adapter. `POST /v1/posts` (a post as PostCache takes it) emits a `post.created` event with the
// post to every connected socket, as a Socket.IO app would broadcast a new post; it answers 201
// with the post, without storing anything.
//
//   node bench/socketio/server.mjs 127.0.0.1:9100
import { createServer } from "node:http";
import { Server } from "socket.io";

const [host, port] = (process.argv[2] ?? "127.0.0.1:9100").split(":");
let next = 1;
const http = createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/v1/posts") {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const post = { id: String(next++), ...JSON.parse(Buffer.concat(chunks).toString()) };
    io.emit("post", { type: "post.created", post_id: post.id, post });
    res.writeHead(201, { "content-type": "application/json" }).end(JSON.stringify(post));
  });
});
const io = new Server(http, { transports: ["websocket"], serveClient: false });
http.listen(Number(port), host, () => console.log(`socket.io listening on ${host}:${port}`));
