// The trust boundary, tried as an attacker would: a tenant's pod spec or a forged etcd value
// must never make ratchet delete, replace or create an interface it was not asked to build,
// in any namespace; the agent survives whatever it is sent; DEL says what it could not do.
import { describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { join } from "node:path";
import {
  annotatedPod,
  type Cluster,
  ifindexIn,
  makeCluster,
  type Node,
  optInPod,
} from "../support/cluster.ts";
import { groupOf } from "../../src/links/builder.ts";
import { waitFor } from "../support/child.ts";
import { ipIn } from "../support/netns.ts";

/** Waits until the node's log holds `text` (the agent reacts to etcd asynchronously). */
async function logShows(n: Node, text: string, ms = 5000): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (n.logTail(400).includes(text)) return true;
    await Bun.sleep(25);
  }
  return n.logTail(400).includes(text);
}

const keysUnder = async (c: Cluster, sub: string) =>
  (await c.etcdKeys()).filter((k) => k.startsWith(`${c.etcdPrefix}/v1/${sub}`));

describe("interface takeover", () => {
  test("a link naming an interface another plugin made fails, names it, leaves no record; a retry deletes nothing", async () => {
    await using c = await makeCluster({ nodes: 1 });
    c.putPod(optInPod("peer"));
    c.putPod(
      annotatedPod("owner", [
        {
          peer: "peer",
          local_ifname: "t0",
          peer_ifname: "t1",
          local_ip: "10.80.0.1/30",
          peer_ip: "10.80.0.2/30",
        },
      ]),
    );
    const n = c.node(1);
    const peer = await n.pod("peer");
    expect((await peer.add()).code).toBe(0);
    const owner = await n.pod("owner");
    await ipIn(owner.netns.name, ["link", "add", "t0", "type", "veth", "peer", "name", "t0p"]);
    const before = await ifindexIn(owner.netns.name, "t0");
    for (let attempt = 0; attempt < 2; attempt++) {
      const r = await owner.add();
      expect(r.code).toBe(1);
      const msg = (r.json as { code: number; msg: string }).msg;
      expect((r.json as { code: number }).code).toBe(101);
      expect(msg).toContain(`interface "t0" in netns "${owner.netns.path}" of pod default/owner`);
      expect(msg).toContain("was not built by ratchet for this link");
      // Nothing half-made: no peer end, no link record a later ADD could read as "built".
      expect(await ifindexIn(peer.netns.name, "t1")).toBeUndefined();
      expect(await keysUnder(c, "links/")).toEqual([]);
      expect(await ifindexIn(owner.netns.name, "t0")).toBe(before as number);
    }
    await c.stopAllAndAssertClean();
  });

  test("an end in ratchet's device group without an alias (its agent died mid-build) is its own: replaced", async () => {
    await using c = await makeCluster({ nodes: 1 });
    c.putPod(optInPod("peer"));
    c.putPod(
      annotatedPod("owner", [
        {
          peer: "peer",
          local_ifname: "h0",
          peer_ifname: "h1",
          local_ip: "10.86.0.1/30",
          peer_ip: "10.86.0.2/30",
        },
      ]),
    );
    const n = c.node(1);
    const peer = await n.pod("peer");
    expect((await peer.add()).code).toBe(0);
    const owner = await n.pod("owner");
    // What a killed agent leaves: the veth created (in ratchet's group for that netns), no
    // alias yet.
    const group = String(groupOf(owner.netns.path));
    await ipIn(owner.netns.name, [
      "link",
      "add",
      "h0",
      "group",
      group,
      "type",
      "veth",
      "peer",
      "name",
      "h0x",
    ]);
    // The same without ratchet's group is someone else's.
    await ipIn(peer.netns.name, ["link", "add", "zz", "type", "veth", "peer", "name", "zzx"]);
    const before = await ifindexIn(owner.netns.name, "h0");
    expect((await owner.add()).code).toBe(0);
    expect((await c.iface(owner, "h0"))?.kind).toBe("veth");
    expect(await ifindexIn(owner.netns.name, "h0")).not.toBe(before as number);
    expect(await ifindexIn(owner.netns.name, "h0x")).toBeUndefined();
    expect(await c.ping(owner, "10.86.0.2")).toBe(true);
    expect(await ifindexIn(peer.netns.name, "zz")).toBeDefined();
    await c.stopAllAndAssertClean();
  });

  test("across nodes, an unmarked VXLAN device of the tunnel end's name is not replaced", async () => {
    await using c = await makeCluster({ nodes: 2 });
    c.putPod(optInPod("far"));
    c.putPod(
      annotatedPod("near", [
        {
          peer: "far",
          local_ifname: "u0",
          peer_ifname: "u1",
          local_ip: "10.81.0.1/30",
          peer_ip: "10.81.0.2/30",
        },
      ]),
    );
    const far = await c.node(2).pod("far");
    await ipIn(far.netns.name, ["link", "add", "u1", "type", "vxlan", "id", "99", "dstport", "4789"]);
    const before = await ifindexIn(far.netns.name, "u1");
    expect((await far.add()).code).toBe(0);
    const near = await c.node(1).pod("near");
    expect((await near.add()).code).toBe(0);
    expect(await logShows(c.node(2), "was not built by ratchet for this link")).toBe(true);
    expect(await ifindexIn(far.netns.name, "u1")).toBe(before as number);
    expect((await c.iface(far, "u1"))?.vni).toBe(99);
    await c.stopAllAndAssertClean();
  });
});

describe("forged etcd values are data, never orders", () => {
  test("a forged endpoint that claims this node and the host's netns makes nothing anywhere", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    c.putPod(
      annotatedPod("real", [
        {
          peer: "ghost",
          local_ifname: "g0",
          peer_ifname: "evil0",
          local_ip: "10.82.0.1/30",
          peer_ip: "10.82.0.2/30",
        },
      ]),
    );
    const ghost = {
      namespace: "default",
      pod: "ghost",
      containerId: "forged",
      ifname: "eth0",
      vtep: n.underlay,
      node: n.underlay,
      netns: n.host.path,
      createdAt: new Date().toISOString(),
    };
    await c.etcdPut("v1/endpoints/default/ghost", JSON.stringify(ghost));
    const real = await n.pod("real");
    expect((await real.add()).code).toBe(0);
    expect(await n.strayHostLinks()).toEqual([]);
    expect(await c.iface(real, "g0")).toBeUndefined();
    expect(n.logTail(100)).toContain("this agent never attached it");
    await c.deleteEtcdPrefix();
    await c.stopAllAndAssertClean();
  });

  test("forged tunnel-end entries cannot touch an unmarked interface, CNI_IFNAME, the host or crash the agent", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    c.putPod(optInPod("real"));
    const real = await n.pod("real");
    expect((await real.add()).code).toBe(0);
    const [agent] = n.agents();
    await ipIn(real.netns.name, ["link", "add", "keep0", "type", "veth", "peer", "name", "keep0p"]);
    const keep = await ifindexIn(real.netns.name, "keep0");
    const vtep = n.underlay;
    // A tunnel entry (one chunk of the pair default/other, default/real) naming `ifname`.
    const entry = (ifname: string, containerId: string) => ({
      pod: "default/real",
      containerId,
      netns: n.host.path,
      remote: "10.250.250.2",
      builtBy: "10.250.250.2",
      ends: [
        { key: `default/other/x0:default/real/${ifname}`, end: { ifname, ips: ["10.83.0.2/30"] }, vni: 77 },
      ],
    });
    const put = (e: ReturnType<typeof entry>) =>
      c.etcdPut(`v1/nodes/${vtep}/links/default/other/default/real/0000`, JSON.stringify(e));
    await put(entry("keep0", real.containerId));
    expect(await logShows(n, "was not built by ratchet for this link")).toBe(true);
    await put(entry("eth0", real.containerId));
    expect(await logShows(n, "tunnel end refused: it names the pod's CNI_IFNAME")).toBe(true);
    // A container this node never attached, naming the host's underlay: ignored.
    await put(entry("ul0", "not-here"));
    await c.etcdPut(`v1/nodes/${vtep}/links/default/a/default/real/0001`, "null");
    expect(await logShows(n, "ignoring a bad value in etcd")).toBe(true);
    // Entries deleted: the agent removes only ends it built (none of these).
    await c.deleteEtcdPrefix();
    expect(await ifindexIn(real.netns.name, "keep0")).toBe(keep as number);
    expect(await ifindexIn(n.host.name, "ul0")).toBeDefined();
    expect(await n.strayHostLinks()).toEqual([]);
    // Still the same agent, still answering.
    const other = await n.pod("plain");
    c.putPod(optInPod("plain"));
    expect((await other.add()).code).toBe(0);
    expect(n.agents()).toEqual([agent as number]);
    await c.stopAllAndAssertClean();
  });
});

describe("consent first", () => {
  test("a declaration from another namespace never makes the other pod's own ADD fail, nor is stored under it", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    c.putPod(optInPod("friend", "victim"));
    c.putPod(
      annotatedPod(
        "target",
        [
          {
            peer: "friend",
            local_ifname: "v0",
            peer_ifname: "v1",
            local_ip: "10.84.0.1/30",
            peer_ip: "10.84.0.2/30",
          },
        ],
        "victim",
      ),
    );
    // Names the victim's own link interface and its CNI_IFNAME: both made the victim's ADD fail.
    c.putPod(
      annotatedPod(
        "intruder",
        [
          { peer: "target", peer_namespace: "victim", local_ifname: "w0", peer_ifname: "v0" },
          { peer: "target", peer_namespace: "victim", local_ifname: "w1", peer_ifname: "eth0" },
        ],
        "attacker",
      ),
    );
    const intruder = await n.pod("intruder", "attacker");
    expect((await intruder.add()).code).toBe(0);
    const friend = await n.pod("friend", "victim");
    expect((await friend.add()).code).toBe(0);
    const target = await n.pod("target", "victim");
    const r = await target.add();
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('"v0"');
    expect(await c.ping(target, "10.84.0.2")).toBe(true);
    expect(await c.iface(intruder, "w0")).toBeUndefined();
    const underVictim = (await keysUnder(c, "decl/victim/")).filter((k) => k.endsWith("/attacker/intruder"));
    expect(underVictim).toEqual([]);
    expect((await keysUnder(c, "peers/victim/")).filter((k) => k.includes("attacker"))).toEqual([]);
    await c.stopAllAndAssertClean();
  });
});

describe("DEL tells the truth", () => {
  test("an end the kernel refuses to remove fails the DEL with the reason; the records stay for the retry", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    c.putPod(optInPod("b"));
    const link = {
      peer: "b",
      local_ifname: "d0",
      peer_ifname: "d1",
      local_ip: "10.85.0.1/30",
      peer_ip: "10.85.0.2/30",
    };
    c.putPod(annotatedPod("a", [link]));
    const b = await n.pod("b");
    const a = await n.pod("a");
    expect((await b.add()).code).toBe(0);
    expect((await a.add()).code).toBe(0);
    // Make "d0" an end the kernel cannot delete: lo, renamed and given the link's mark.
    const mark = `ratchet:v1:${createHash("sha256").update("default/a/d0:default/b/d1").digest("hex").slice(0, 32)}`;
    expect((await c.iface(a, "d0"))?.kind).toBe("veth");
    await ipIn(a.netns.name, ["link", "del", "d0"]);
    await ipIn(a.netns.name, ["link", "set", "lo", "down"]);
    await ipIn(a.netns.name, ["link", "set", "lo", "name", "d0"]);
    await ipIn(a.netns.name, ["link", "set", "d0", "alias", mark]);
    const r = await a.del();
    expect(r.code).toBe(1);
    expect((r.json as { msg: string }).msg).toContain("DEL of pod default/a: could not remove d0");
    expect(await keysUnder(c, "endpoints/default/a")).toHaveLength(1);
    // The obstacle goes; the runtime's retry removes the end, and the records follow it.
    await ipIn(a.netns.name, ["link", "set", "d0", "name", "lo"]);
    expect((await a.del()).code).toBe(0);
    await waitFor("a's records to go", async () => (await keysUnder(c, "endpoints/default/a")).length === 0);
    await c.stopAllAndAssertClean();
  });

  test("with the agent unreachable, DEL still runs the plugins' DEL and then fails with 11", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    c.putPod(optInPod("lone"));
    const lone = await n.pod("lone");
    expect((await lone.add()).code).toBe(0);
    const r = await lone.del({
      child_path: join(c.dir, "no-such-agent"),
      child_socket: join(c.dir, "x", "s.sock"),
    });
    expect(r.code).toBe(1);
    expect((r.json as { code: number }).code).toBe(11);
    await c.stopAllAndAssertClean();
  });
});

describe("the agent survives every input", () => {
  test("endless lines and idle connections are closed; RSS stays bounded; the agent keeps serving", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    c.putPod(optInPod("p1"));
    const p1 = await n.pod("p1");
    expect((await p1.add()).code).toBe(0);
    const [pid] = n.agents();
    const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) * 1024;
    const before = rss();
    const closed: Promise<void>[] = [];
    const chunk = Buffer.alloc(256 * 1024, 0x61);
    for (let i = 0; i < 100; i++) {
      let done: () => void = () => undefined;
      closed.push(new Promise<void>((r) => (done = r)));
      const s = await Bun.connect({
        unix: n.socket,
        socket: { data() {}, close: () => done(), error: () => done() },
      });
      try {
        for (let k = 0; k < 16; k++) s.write(chunk); // up to 4 MiB, no newline
      } catch {
        // closed by the agent already
      }
    }
    await Promise.all(closed);
    expect(rss() - before).toBeLessThan(256 * 1024 * 1024);
    // A connection that says nothing is closed too.
    let idleClosed = false;
    await Bun.connect({
      unix: n.socket,
      socket: {
        data() {},
        close: () => {
          idleClosed = true;
        },
      },
    });
    const until = Date.now() + 15_000;
    while (!idleClosed && Date.now() < until) await Bun.sleep(50);
    expect(idleClosed).toBe(true);
    expect(n.agents()).toEqual([pid as number]);
    c.putPod(optInPod("p2"));
    expect((await (await n.pod("p2")).add()).code).toBe(0);
    await c.stopAllAndAssertClean();
  }, 60_000);

  test("an existing socket directory keeps its mode; the DEL journal skips a bad line", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    const shared = join(c.dir, "shared");
    mkdirSync(shared);
    chmodSync(shared, 0o755);
    const socket = join(shared, "child.sock");
    const conf = n.conf({ child_socket: socket });
    // One bad line, then a good one: a DEL of a container ratchet no longer knows.
    const good = {
      env: { command: "DEL", containerId: "gone-1", netns: "", ifname: "eth0", path: [] },
      conf,
    };
    writeFileSync(`${socket}.deferred-del.jsonl`, `{"env": 12\n${JSON.stringify(good)}\n`);
    c.putPod(optInPod("q"));
    const q = await n.pod("q");
    expect((await q.add({ child_socket: socket })).code).toBe(0);
    expect(statSync(shared).mode & 0o777).toBe(0o755);
    expect(statSync(socket).mode & 0o777).toBe(0o600);
    expect(await logShows(n, "skipping a bad line of the deferred DEL journal")).toBe(true);
    expect(await logShows(n, "removed the records of a DEL that happened while etcd was away")).toBe(true);
    expect((await q.del({ child_socket: socket })).code).toBe(0);
    await q.removeNetns();
    await c.assertClean();
  });
});
