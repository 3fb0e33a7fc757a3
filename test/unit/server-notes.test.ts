// Notes and interim lines on the agent's socket: the plugin tells the agent something (the
// boot network's interface) without waiting for an answer, and exits at once; the agent
// says something before its answer (a DEL's "this container is mine").
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { requestKey, Server } from "../../src/child/server.ts";
import { parseNetConf } from "../../src/cni/config.ts";
import { Logger } from "../../src/log.ts";
import { ChildAgent } from "../../src/parent/agent-client.ts";
import { hello } from "../../src/version.ts";
import { Connection } from "../../src/rpc/connection.ts";
import type { Request } from "../../src/rpc/protocol.ts";

const BOOT = { name: "boot", interface: "eth0", ips: ["10.1.2.3"] };
const POD = { namespace: "lab", name: "r1" };

let dir: string;
let server: Server;
let handled: Request[];
let gate: PromiseWithResolvers<void>;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "ratchet-notes-"));
  handled = [];
  gate = Promise.withResolvers<void>();
  server = new Server({
    socket: join(dir, "agent.sock"),
    log: new Logger("test", "error"),
    keyOf: requestKey,
    // Connections with nothing in flight are closed soon (5 s in the agent).
    idleConnectionMs: 100,
    handle: async (req, _signal, interim) => {
      if (req.method === "hello") return hello();
      handled.push(req);
      if (req.method === "classify") return { eligible: true, links: 0 };
      if (req.method === "detach") {
        interim({ owned: "yes" }); // not what the schema allows: ignored
        interim({ owned: true });
        await gate.promise;
        return { owned: true };
      }
      return { ok: true };
    },
  });
  server.listen();
});

afterEach(() => {
  server.stopListening();
  rmSync(dir, { recursive: true, force: true });
});

/** A raw client: writes lines, collects every line the agent answers. */
async function client() {
  const lines: string[] = [];
  let buf = "";
  const sock = await Bun.connect({
    unix: join(dir, "agent.sock"),
    socket: {
      data(_s, chunk) {
        buf += new TextDecoder().decode(chunk);
        const parts = buf.split("\n");
        buf = parts.pop() ?? "";
        lines.push(...parts);
      },
    },
  });
  const send = (o: unknown) => sock.write(`${JSON.stringify(o)}\n`);
  return { sock, lines, send };
}

const until = async (what: string, ok: () => boolean) => {
  for (let i = 0; i < 200 && !ok(); i++) await Bun.sleep(5);
  if (!ok()) throw new Error(`timed out waiting for ${what}`);
};

/** The plugin's note of the boot network's interface, as it sends it. */
const bootedNote = () => ({
  id: 1,
  method: "booted",
  deadline: Date.now() + 5000,
  params: { pod: POD, boot: BOOT },
  note: true,
});

describe("notes", () => {
  test("a note is served after the caller has hung up, and never answered", async () => {
    const c = await client();
    c.send(bootedNote());
    c.sock.end();
    await until("the note", () => handled.length === 1);
    expect(handled[0]?.method).toBe("booted");
    expect(handled[0]?.params).toEqual({ pod: POD, boot: BOOT });

    // The same request as a question gets its answer.
    const d = await client();
    d.send({ id: 2, method: "booted", deadline: Date.now() + 5000, params: { pod: POD, boot: BOOT } });
    await until("the answer", () => d.lines.length === 1);
    expect(JSON.parse(d.lines[0] as string)).toMatchObject({ id: 2, ok: true });
    // The note's connection never had an answer on it.
    expect(c.lines).toEqual([]);
    d.sock.end();
  });

  test("a note about a pod waits for the pod's turn", async () => {
    // Work of the pod's own holds its turn (an ADD still running) until the gate opens.
    expect(
      requestKey({ id: 1, method: "booted", deadline: 0, params: { pod: POD, boot: BOOT }, note: true }),
    ).toBe("pod/lab/r1");
    const held = server.serialize("pod/lab/r1", () => gate.promise);
    const c = await client();
    c.send(bootedNote());
    await Bun.sleep(50);
    expect(handled).toEqual([]);
    gate.resolve();
    await held;
    await until("the note", () => handled.length === 1);
    c.sock.end();
  });

  test("only a note method may be sent as a note; bad params are refused", async () => {
    const c = await client();
    c.send({ id: 1, method: "classify", deadline: Date.now() + 5000, params: {}, note: true });
    c.send({ id: 2, method: "booted", deadline: Date.now() + 5000, params: { pod: POD }, note: true });
    await until("two refusals", () => c.lines.length === 2);
    const [a, b] = c.lines.map((l) => JSON.parse(l));
    expect(a.ok).toBe(false);
    expect(a.error.msg).toContain("classify is not a note");
    expect(b.ok).toBe(false);
    expect(b.error.msg).toContain("booted:");
    expect(handled).toEqual([]);
    c.sock.end();
  });
});

describe("interim lines", () => {
  test("the caller hears the agent's interim line before the answer; a malformed one is ignored", async () => {
    const conn = await Connection.open(join(dir, "agent.sock"));
    const heard: unknown[] = [];
    const params = {
      env: {
        command: "DEL",
        containerId: "c1",
        netns: "/var/run/netns/x",
        ifname: "eth0",
        path: [],
        pod: POD,
      },
      conf: { cniVersion: "1.0.0", name: "t", type: "ratchet", etcd_endpoints: ["http://127.0.0.1:2379"] },
    } as never;
    const answer = conn.call("detach", params, 5000, undefined, (i) => heard.push(i));
    await until("the interim line", () => heard.length === 1);
    expect(heard).toEqual([{ owned: true }]);
    gate.resolve();
    expect(await answer).toEqual({ owned: true });
    expect(heard).toHaveLength(1);
    conn.close();
  });
});

describe("the plugin's booted note", () => {
  test("reaches the agent when the agent closed the ADD's connection meanwhile (a slow boot plugin)", async () => {
    const conf = parseNetConf({
      cniVersion: "1.0.0",
      name: "t",
      type: "ratchet",
      etcd_endpoints: ["http://127.0.0.1:2379"],
      child_socket: join(dir, "agent.sock"),
      log_file: join(dir, "log"),
    });
    const env = {
      command: "ADD" as const,
      containerId: "c1",
      netns: "/var/run/netns/x",
      ifname: "eth0",
      path: ["/usr/lib/cni"],
      pod: POD,
      args: {},
    };
    const agent = new ChildAgent(new Logger("test", "error", join(dir, "log")));
    try {
      expect((await agent.classify(env as never, conf)).eligible).toBe(true);
      await Bun.sleep(400); // the agent's reaper closes the idle connection
      await agent.booted(env as never, conf, BOOT);
      await until("the note", () => handled.some((r) => r.method === "booted"));
      expect(handled.find((r) => r.method === "booted")?.params).toEqual({ pod: POD, boot: BOOT });
    } finally {
      agent.close();
    }
  });
});
