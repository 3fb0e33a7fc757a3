// Carries loopback TCP between network namespaces through unix sockets (a unix socket's
// path reaches every netns). A node's containerd, its plugin and the node agent run in the
// node's host netns, where 127.0.0.1 is not the test etcd's or API server's: so the test
// runs this twice, in the root netns (unix socket -> 127.0.0.1:PORT) and in the node's netns
// (127.0.0.1:PORT -> unix socket), and the same URLs work on both sides.
//   bun forward-fixture.ts unix-to-tcp PATH PORT [PATH PORT ...]
//   bun forward-fixture.ts tcp-to-unix PORT PATH [PORT PATH ...]
// Prints "ready" once every listener is up; runs until killed.
import net from "node:net";

function join(a: net.Socket, b: net.Socket): void {
  a.pipe(b);
  b.pipe(a);
  for (const [x, y] of [
    [a, b],
    [b, a],
  ] as const) {
    x.on("error", () => y.destroy());
    x.on("close", () => y.destroy());
  }
}

const [mode, ...rest] = process.argv.slice(2);
if ((mode !== "unix-to-tcp" && mode !== "tcp-to-unix") || rest.length === 0 || rest.length % 2 !== 0) {
  console.error("usage: forward-fixture.ts unix-to-tcp|tcp-to-unix FROM TO [FROM TO ...]");
  process.exit(2);
}
const listening: Promise<void>[] = [];
for (let i = 0; i < rest.length; i += 2) {
  const from = rest[i] as string;
  const to = rest[i + 1] as string;
  const server = net.createServer((c) =>
    join(
      c,
      mode === "unix-to-tcp"
        ? net.connect({ host: "127.0.0.1", port: Number(to) })
        : net.connect({ path: to }),
    ),
  );
  listening.push(
    new Promise((resolve, reject) => {
      server.once("error", reject);
      if (mode === "unix-to-tcp") server.listen({ path: from }, resolve);
      else server.listen({ host: "127.0.0.1", port: Number(from) }, resolve);
    }),
  );
}
await Promise.all(listening);
console.log("ready");
