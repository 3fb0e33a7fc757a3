// What one pod's labels may do to another pod: nothing beyond the link both agreed to.
// A peer's own interfaces are never removed or renamed, and namespaces are boundaries.
import { describe, expect, test } from "bun:test";
import { annotatedPod, ifindexIn, makeCluster, optInPod } from "../support/cluster.ts";
import { ipIn } from "../support/netns.ts";

describe("a pod's links cannot reach into its peer", () => {
  test("a link naming the peer's CNI_IFNAME is refused; the peer's interface is untouched", async () => {
    await using c = await makeCluster({ nodes: 1 });
    c.putPod(optInPod("victim"));
    c.putPod(
      annotatedPod("attacker", [
        {
          peer: "victim",
          local_ifname: "x0",
          peer_ifname: "eth0",
          local_ip: "10.70.0.1/30",
          peer_ip: "10.70.0.2/30",
        },
      ]),
    );
    const n = c.node(1);
    const victim = await n.pod("victim");
    // The victim's own network: an eth0 made by "another plugin".
    await ipIn(victim.netns.name, ["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    const before = await ifindexIn(victim.netns.name, "eth0");
    expect((await victim.add()).code).toBe(0);
    const attacker = await n.pod("attacker");
    expect((await attacker.add()).code).toBe(0);
    expect(await ifindexIn(victim.netns.name, "eth0")).toBe(before as number);
    expect(await c.iface(attacker, "x0")).toBeUndefined();
    expect(n.logTail(100)).toContain('"msg":"link refused"');
    expect(n.logTail(100)).toContain("it names the peer's CNI_IFNAME");
    for (const p of [attacker, victim]) {
      expect((await p.del()).code).toBe(0);
      await p.removeNetns();
    }
    await c.assertClean();
  });

  test("a link naming another of the peer's interfaces fails, naming it, leaves it alone", async () => {
    await using c = await makeCluster({ nodes: 2 });
    c.putPod(optInPod("victim"));
    c.putPod(optInPod("victim2"));
    c.putPod(
      annotatedPod("attacker", [
        {
          peer: "victim",
          local_ifname: "y0",
          peer_ifname: "net1",
          local_ip: "10.71.0.1/30",
          peer_ip: "10.71.0.2/30",
        },
      ]),
    );
    c.putPod(
      annotatedPod("attacker2", [
        {
          peer: "victim2",
          local_ifname: "y1",
          peer_ifname: "net1",
          local_ip: "10.72.0.1/30",
          peer_ip: "10.72.0.2/30",
        },
      ]),
    );
    const [n1, n2] = [c.node(1), c.node(2)];
    const victim = await n1.pod("victim");
    const victim2 = await n2.pod("victim2");
    for (const v of [victim, victim2]) {
      await ipIn(v.netns.name, ["link", "add", "net1", "type", "veth", "peer", "name", "net1p"]);
      expect((await v.add()).code).toBe(0);
    }
    const netIdx = await ifindexIn(victim.netns.name, "net1");
    const netIdx2 = await ifindexIn(victim2.netns.name, "net1");

    // Same node: the peer's end would take a name that is not ratchet's: refused, named.
    const attacker = await n1.pod("attacker");
    const r = await attacker.add();
    expect(r.code).toBe(1);
    expect((r.json as { code: number }).code).toBe(101);
    expect((r.json as { msg: string }).msg).toContain(`interface "net1" in netns "${victim.netns.path}"`);
    expect((r.json as { msg: string }).msg).toContain("of pod default/victim");
    expect((r.json as { msg: string }).msg).toContain("was not built by ratchet for this link");
    expect(await ifindexIn(victim.netns.name, "net1")).toBe(netIdx as number);
    expect((await attacker.del()).code).toBe(0);

    // Across nodes: the victim's agent refuses to replace its net1.
    const attacker2 = await n1.pod("attacker2");
    expect((await attacker2.add()).code).toBe(0);
    const until = Date.now() + 3000;
    while (Date.now() < until && !n2.logTail(200).includes("was not built by ratchet for this link"))
      await Bun.sleep(50);
    expect(n2.logTail(200)).toContain("could not build a tunnel end");
    expect(n2.logTail(200)).toContain('interface \\"net1\\"');
    expect(await ifindexIn(victim2.netns.name, "net1")).toBe(netIdx2 as number);
    expect((await c.iface(victim2, "net1"))?.kind).toBe("veth");

    for (const p of [attacker, attacker2, victim, victim2]) {
      expect((await p.del()).code).toBe(0);
      await p.removeNetns();
    }
    await c.assertClean();
  });
});

describe("namespaces are boundaries", () => {
  test("a link into another namespace needs a declaration from both pods", async () => {
    await using c = await makeCluster({ nodes: 1 });
    c.putPod(
      annotatedPod(
        "a",
        [
          {
            peer: "b",
            peer_namespace: "team-b",
            local_ifname: "z0",
            peer_ifname: "z1",
            local_ip: "10.73.0.1/30",
            peer_ip: "10.73.0.2/30",
          },
        ],
        "team-a",
      ),
    );
    c.putPod(optInPod("b", "team-b"));
    const n = c.node(1);
    const a = await n.pod("a", "team-a");
    const b = await n.pod("b", "team-b");
    expect((await a.add()).code).toBe(0);
    expect((await b.add()).code).toBe(0);
    expect(await c.iface(a, "z0")).toBeUndefined();
    expect(await c.iface(b, "z1")).toBeUndefined();
    // b consents by declaring the same link; its next sandbox gets it.
    expect((await b.del()).code).toBe(0);
    await b.removeNetns();
    c.putPod(
      annotatedPod(
        "b",
        [
          {
            peer: "a",
            peer_namespace: "team-a",
            local_ifname: "z1",
            peer_ifname: "z0",
            local_ip: "10.73.0.2/30",
            peer_ip: "10.73.0.1/30",
          },
        ],
        "team-b",
      ),
    );
    const b2 = await b.recreate();
    expect((await b2.add()).code).toBe(0);
    expect((await c.iface(b2, "z1"))?.kind).toBe("veth");
    expect(await c.ping(b2, "10.73.0.1", 5000)).toBe(true);
    for (const p of [a, b2]) {
      expect((await p.del()).code).toBe(0);
      await p.removeNetns();
    }
    await c.assertClean();
  });
});
