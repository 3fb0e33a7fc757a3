// The rules of linking as tables: declared links plus what the store holds, in; the plan out.
import { describe, expect, test } from "bun:test";
import { CniError } from "../../src/cni/errors.ts";
import { type Declaration, type PlanInput, plan } from "../../src/links/planner.ts";
import { type LinkSpec, linkKey, reverseLink } from "../../src/links/spec.ts";
import type { EndpointRecord } from "../../src/store/records.ts";

function spec(
  from: string,
  to: string,
  localIf: string,
  peerIf: string,
  extra: Partial<LinkSpec> = {},
): LinkSpec {
  const [ns, pod] = from.split("/") as [string, string];
  const [pns, ppod] = to.split("/") as [string, string];
  return {
    local: { namespace: ns, pod, ifname: localIf, ips: ["10.0.0.1/30"] },
    peer: { namespace: pns, pod: ppod, ifname: peerIf, ips: ["10.0.0.2/30"] },
    source: "annotation",
    ...extra,
  };
}

const decl = (declarer: string, s: LinkSpec): Declaration => ({ declarer, link: linkKey(s), spec: s });

function endpoint(id: string, node = "10.1.0.1", ifname = "eth0"): EndpointRecord {
  const [namespace, pod] = id.split("/") as [string, string];
  return { namespace, pod, containerId: `c-${pod}`, ifname, node, vtep: node, createdAt: "" };
}

function input(over: Partial<PlanInput>): PlanInput {
  return {
    id: "ns/a",
    containerId: "c-a",
    cniIfname: "eth0",
    node: "10.1.0.1",
    vtep: "10.1.0.1",
    declared: [],
    others: [],
    previousPeers: [],
    peers: new Map(),
    ...over,
  };
}

const peers = (...eps: EndpointRecord[]) => new Map(eps.map((e) => [`${e.namespace}/${e.pod}`, e]));

describe("who builds what", () => {
  const ab = spec("ns/a", "ns/b", "x0", "x1");
  const cases: Array<{ name: string; in: Partial<PlanInput>; builds: string[]; waits: string[] }> = [
    { name: "peer not registered: waits", in: { declared: [ab] }, builds: [], waits: ["waiting"] },
    {
      name: "peer here on this node: veth",
      in: { declared: [ab], peers: peers(endpoint("ns/b")) },
      builds: ["veth"],
      waits: [],
    },
    {
      name: "peer on another node: vxlan",
      in: { declared: [ab], peers: peers(endpoint("ns/b", "10.1.0.2")) },
      builds: ["vxlan"],
      waits: [],
    },
    {
      name: "peer on another node, this node without a VTEP: waits",
      in: { declared: [ab], vtep: undefined, node: "host-a", peers: peers(endpoint("ns/b", "10.1.0.2")) },
      builds: [],
      waits: ["waiting"],
    },
    {
      name: "opt-in pod: takes its peer's declaration",
      in: { id: "ns/b", others: [decl("ns/a", ab)], peers: peers(endpoint("ns/a")) },
      builds: ["veth"],
      waits: [],
    },
    {
      name: "a link naming the peer's CNI_IFNAME is refused",
      in: { declared: [spec("ns/a", "ns/b", "x0", "eth0")], peers: peers(endpoint("ns/b")) },
      builds: [],
      waits: ["refused"],
    },
    {
      name: "across namespaces, one declaration: waits",
      in: { declared: [spec("ns/a", "other/b", "x0", "x1")], peers: peers(endpoint("other/b")) },
      builds: [],
      waits: ["waiting"],
    },
    {
      name: "across namespaces, both declare: built",
      in: {
        declared: [spec("ns/a", "other/b", "x0", "x1")],
        others: [decl("other/b", reverseLink(spec("ns/a", "other/b", "x0", "x1")))],
        peers: peers(endpoint("other/b")),
      },
      builds: ["veth"],
      waits: [],
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const p = plan(input(c.in));
      expect(p.builds.map((b) => b.kind)).toEqual(c.builds as Array<"veth" | "vxlan">);
      expect(p.waits.map((w) => w.state)).toEqual(c.waits as Array<"waiting">);
    });
  }
});

describe("consent and conflicts", () => {
  test("a declaration from another namespace for a link this pod does not declare is inert", () => {
    // It names this pod's CNI_IFNAME and one of its interfaces: neither matters.
    const mine = spec("victim/t", "victim/f", "v0", "v1");
    const p = plan(
      input({
        id: "victim/t",
        declared: [mine],
        others: [
          decl("attacker/i", spec("attacker/i", "victim/t", "w0", "v0")),
          decl("attacker/i", spec("attacker/i", "victim/t", "w1", "eth0")),
        ],
        peers: peers(endpoint("victim/f"), endpoint("attacker/i")),
      }),
    );
    expect(p.builds.map((b) => b.link.key)).toEqual([linkKey(mine)]);
    expect([...p.ifnames.values()]).toEqual(["v0"]);
  });

  test("two pods of one namespace that disagree: the ADD is refused with 103", () => {
    const a = spec("ns/a", "ns/b", "x0", "x1");
    const b = reverseLink(spec("ns/a", "ns/b", "x0", "x1", { mtu: 9000 }));
    const other = { ...a, mtu: 1400 };
    expect(() => plan(input({ declared: [other], others: [decl("ns/b", b)] }))).toThrow(CniError);
    try {
      plan(input({ declared: [other], others: [decl("ns/b", b)] }));
    } catch (err) {
      expect((err as CniError).code).toBe(103);
      expect((err as CniError).message).toContain("MTU: 1400 vs 9000");
    }
  });

  test("a disagreement across namespaces makes the link wait, never fails the ADD", () => {
    const a = spec("ns/a", "other/b", "x0", "x1", { mtu: 1400 });
    const b = reverseLink(spec("ns/a", "other/b", "x0", "x1", { mtu: 9000 }));
    const p = plan(input({ declared: [a], others: [decl("other/b", b)], peers: peers(endpoint("other/b")) }));
    expect(p.builds).toEqual([]);
    expect(p.waits.map((w) => w.state)).toEqual(["conflict"]);
  });

  test("a declaration filed under a link key it does not make is ignored", () => {
    const real = reverseLink(spec("ns/a", "ns/b", "x0", "x1"));
    const forged: Declaration = { declarer: "ns/b", link: "ns/a/y0:ns/b/y1", spec: real };
    const p = plan(input({ others: [forged], peers: peers(endpoint("ns/b")) }));
    expect(p.builds).toEqual([]);
    expect(p.ifnames.size).toBe(0);
  });

  test("this pod's own links: never CNI_IFNAME, never one name twice (103)", () => {
    expect(() => plan(input({ declared: [spec("ns/a", "ns/b", "eth0", "x1")] }))).toThrow(/CNI_IFNAME/);
    const twice = [spec("ns/a", "ns/b", "x0", "x1"), spec("ns/a", "ns/c", "x0", "x2")];
    expect(() => plan(input({ declared: twice }))).toThrow(/and so does link/);
  });

  test("peers this pod declared links to before and declares none to now are stale", () => {
    const kept = spec("ns/a", "ns/c", "x0", "x1");
    const p = plan(input({ declared: [kept], previousPeers: ["ns/b", "ns/c"] }));
    expect(p.stale).toEqual(["ns/b"]);
  });
});
