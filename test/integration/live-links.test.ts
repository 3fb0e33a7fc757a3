// Live links: impairments and state declared in the pod's annotation are applied by netlink,
// changed on running pods through the API server's watch (no re-ADD), read back from the
// kernel, kept after an agent restart exactly once, and refused plainly where the kernel
// cannot do them (this kernel has tbf but no sch_netem; netem itself is proven in the VM test).
import { describe, expect, test } from "bun:test";
import { waitFor } from "../support/child.ts";
import {
  type AnnotationLink,
  annotatedPod,
  type Cluster,
  makeCluster,
  optInPod,
  type Pod,
} from "../support/cluster.ts";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { hiddenCheckout, installedBin, run } from "../support/env.ts";
import { ipIn } from "../support/netns.ts";

/** Changes a running pod's links as `kubectl annotate --overwrite` would: same object, same uid. */
function setLinks(c: Cluster, name: string, links: AnnotationLink[]): void {
  const pod = c.api.getPod("default", name);
  if (!pod) throw new Error(`no pod ${name}`);
  const annotations = { ...pod.metadata.annotations, "ratchet/links": JSON.stringify(links) };
  c.putPod({ ...pod, metadata: { ...pod.metadata, annotations } });
}

interface TcQdisc {
  kind: string;
  root?: boolean;
  options?: { rate?: number };
}

async function rootQdiscs(p: Pod, dev: string): Promise<TcQdisc[]> {
  const r = await run(["tc", "-n", p.netns.name, "-j", "qdisc", "show", "dev", dev]);
  if (r.code !== 0) throw new Error(`tc qdisc show: ${r.stderr}`);
  return (JSON.parse(r.stdout) as TcQdisc[]).filter((q) => q.root);
}

/** The root tbf's rate in kbit/s, or undefined when the root qdisc is not a tbf. */
async function tbfKbit(p: Pod, dev: string): Promise<number | undefined> {
  const roots = await rootQdiscs(p, dev);
  expect(roots.length).toBeLessThanOrEqual(1);
  const q = roots[0];
  return q?.kind === "tbf" && q.options?.rate !== undefined ? (q.options.rate * 8) / 1000 : undefined;
}

async function ifindex(p: Pod, dev: string): Promise<number | undefined> {
  const out = JSON.parse(await ipIn(p.netns.name, ["-j", "link", "show", "dev", dev])) as Array<{
    ifindex: number;
  }>;
  return out[0]?.ifindex;
}

const link = (extra: Partial<AnnotationLink> = {}): AnnotationLink => ({
  peer: "b",
  local_ifname: "x0",
  peer_ifname: "x1",
  local_ip: "10.90.0.1/30",
  peer_ip: "10.90.0.2/30",
  ...extra,
});

interface LinksJson {
  links: Array<{
    key: string;
    declared: { state: string; a: { netem: unknown }; b: { netem: unknown } };
    observed: { a?: { present: boolean; up: boolean; netem: unknown; error?: string }; b?: unknown };
  }>;
}

/** `ratchet links --output json` with node 1's config, as an operator runs it. */
async function linksJson(c: Cluster): Promise<LinksJson> {
  const file = join(c.dir, "links.conf");
  writeFileSync(file, JSON.stringify(c.node(1).conf()));
  const r = await run(hiddenCheckout([installedBin(), "links", "--config", file, "--output", "json"]));
  if (r.code !== 0) throw new Error(`ratchet links: ${r.stderr}`);
  return JSON.parse(r.stdout) as LinksJson;
}

describe("rate (tbf) on a veth link", () => {
  test("applied on both ends, changed live in place, checked, kept by a restarted agent, removed", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    c.putPod(optInPod("b"));
    c.putPod(annotatedPod("a", [link({ netem: { rate_kbit: 1000 } })]));
    const b = await n.pod("b");
    const a = await n.pod("a");
    expect((await b.add()).code).toBe(0);
    const added = await a.add();
    expect(added.code).toBe(0);
    expect(await tbfKbit(a, "x0")).toBe(1000);
    expect(await tbfKbit(b, "x1")).toBe(1000);
    const [ia, ib] = [await ifindex(a, "x0"), await ifindex(b, "x1")];
    expect((await a.check(added.json)).code).toBe(0);

    // Live: 1000 -> 2000 kbit through the API server, no ADD; the same interfaces.
    setLinks(c, "a", [link({ netem: { rate_kbit: 2000 } })]);
    await waitFor(
      "2000 kbit on both ends",
      async () => (await tbfKbit(a, "x0")) === 2000 && (await tbfKbit(b, "x1")) === 2000,
      5000,
    );
    expect([await ifindex(a, "x0"), await ifindex(b, "x1")]).toEqual([ia, ib]);

    // Changed by hand: CHECK says what differs.
    await run(["tc", "-n", a.netns.name, "qdisc", "del", "dev", "x0", "root"]);
    const checked = await a.check(added.json);
    expect(checked.code).toBe(1);
    expect(checked.json).toMatchObject({ code: 104, msg: expect.stringContaining("netem of x0 is {}") });

    // A new agent reconciles: the qdisc comes back, once, on the same interface.
    for (const pid of n.agents()) process.kill(pid, "SIGKILL");
    await waitFor("the agent gone", () => n.agents().length === 0, 5000);
    expect((await n.status()).code).toBe(0); // any call starts an agent
    await waitFor("2000 kbit restored", async () => (await tbfKbit(a, "x0")) === 2000, 5000);
    expect(await rootQdiscs(a, "x0")).toHaveLength(1);
    expect(await ifindex(a, "x0")).toBe(ia as number);
    expect((await a.check(added.json)).code).toBe(0);

    // Removed: the kernel's default qdisc again on both ends.
    setLinks(c, "a", [link({ netem: null })]);
    await waitFor(
      "no tbf",
      async () => (await tbfKbit(a, "x0")) === undefined && (await tbfKbit(b, "x1")) === undefined,
      5000,
    );
    expect(await ifindex(a, "x0")).toBe(ia as number);
    await c.stopAllAndAssertClean();
  }, 60_000);
});

describe("a kernel without sch_netem", () => {
  test("an ADD that asks for netem fails naming the link and sch_netem, and leaves nothing", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    c.putPod(optInPod("b"));
    c.putPod(annotatedPod("a", [link({ netem: { delay_ms: 10, loss_percent: 1 } })]));
    const b = await n.pod("b");
    const a = await n.pod("a");
    expect((await b.add()).code).toBe(0);
    const r = await a.add();
    expect(r.code).toBe(1);
    const msg = (r.json as { msg: string }).msg;
    expect(msg).toContain("link default/a/x0:default/b/x1");
    expect(msg).toContain("modprobe sch_netem");
    expect(await c.iface(a, "x0")).toBeUndefined();
    expect(await c.iface(b, "x1")).toBeUndefined();
    expect((await c.etcdKeys()).filter((k) => k.includes("/v1/links/"))).toEqual([]);
    await c.stopAllAndAssertClean();
  });

  test("a live change to netem is refused: the last good state stays", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    c.putPod(optInPod("b"));
    c.putPod(annotatedPod("a", [link({ netem: { rate_kbit: 500 } })]));
    const b = await n.pod("b");
    const a = await n.pod("a");
    expect((await b.add()).code).toBe(0);
    expect((await a.add()).code).toBe(0);
    setLinks(c, "a", [link({ netem: { delay_ms: 20 } })]);
    await waitFor(
      "the refusal logged",
      () => n.logTail(100).includes("could not be applied: the last good state stays"),
      5000,
    );
    expect(n.logTail(100)).toContain("sch_netem");
    expect(await tbfKbit(a, "x0")).toBe(500);
    // `ratchet links` keeps declared and observed apart, with the reason they differ.
    const view = await linksJson(c);
    const l = view.links.find((x) => x.key === "default/a/x0:default/b/x1");
    expect(l?.declared.a.netem).toEqual({ delay_ms: 20 });
    expect(l?.observed.a).toMatchObject({ present: true, up: true, netem: { rate_kbit: 500 } });
    expect(l?.observed.a?.error).toContain("sch_netem");
    // An invalid value is refused before anything is tried.
    setLinks(c, "a", [link({ netem: { loss_percent: 400 } })]);
    await waitFor(
      "the invalid change logged",
      () => n.logTail(100).includes("is refused: nothing changed"),
      5000,
    );
    expect(await tbfKbit(a, "x0")).toBe(500);
    expect(await c.ping(a, "10.90.0.2")).toBe(true);
    // Both refusals are Warning Events on the pod, for `kubectl describe pod a`.
    const warnings = () =>
      (
        c.api.events as unknown as Array<{
          type: string;
          reason: string;
          message: string;
          involvedObject: { name: string };
        }>
      )
        .filter((e) => e.involvedObject.name === "a" && e.type === "Warning")
        .map((e) => `${e.reason}: ${e.message}`);
    await waitFor("the Warning Events", () => warnings().some((w) => w.includes("loss_percent")), 5000);
    expect(warnings().some((w) => w.includes("sch_netem"))).toBe(true);
    await c.stopAllAndAssertClean();
  });
});

describe("link state", () => {
  for (const nodes of [1, 2] as const) {
    test(`down: both ends down, the peer has no carrier; up: traffic again (${nodes === 1 ? "veth" : "VXLAN"})`, async () => {
      await using c = await makeCluster({ nodes });
      c.putPod(optInPod("b"));
      c.putPod(annotatedPod("a", [link()]));
      const b = await c.node(nodes).pod("b");
      const a = await c.node(1).pod("a");
      expect((await b.add()).code).toBe(0);
      expect((await a.add()).code).toBe(0);
      expect(await c.ping(a, "10.90.0.2")).toBe(true);
      const ia = await ifindex(a, "x0");
      setLinks(c, "a", [link({ state: "down" })]);
      await waitFor(
        "both ends down",
        async () => (await c.iface(a, "x0"))?.up === false && (await c.iface(b, "x1"))?.up === false,
        5000,
      );
      expect(await c.ping(a, "10.90.0.2", 1500)).toBe(false);
      setLinks(c, "a", [link({ state: "up" })]);
      await waitFor(
        "both ends up",
        async () => (await c.iface(a, "x0"))?.up === true && (await c.iface(b, "x1"))?.up === true,
        5000,
      );
      expect(await c.ping(a, "10.90.0.2", 8000)).toBe(true);
      expect(await ifindex(a, "x0")).toBe(ia as number);
      await c.stopAllAndAssertClean();
    }, 60_000);
  }
});

describe("links added and removed on running pods", () => {
  test("one on this node, one across nodes: added live, pinged, removed live with their records", async () => {
    await using c = await makeCluster({ nodes: 2 });
    c.putPod(optInPod("b"));
    c.putPod(optInPod("far"));
    c.putPod(annotatedPod("a", []));
    const b = await c.node(1).pod("b");
    const far = await c.node(2).pod("far");
    const a = await c.node(1).pod("a");
    for (const p of [b, far, a]) expect((await p.add()).code).toBe(0);
    const across: AnnotationLink = {
      peer: "far",
      local_ifname: "y0",
      peer_ifname: "y1",
      local_ip: "10.91.0.1/30",
      peer_ip: "10.91.0.2/30",
    };
    setLinks(c, "a", [link(), across]);
    await waitFor(
      "the new links",
      async () => (await c.iface(b, "x1")) !== undefined && (await c.iface(far, "y1"))?.up === true,
      8000,
    );
    expect(await c.ping(a, "10.90.0.2", 8000)).toBe(true);
    expect(await c.ping(a, "10.91.0.2", 8000)).toBe(true);
    setLinks(c, "a", []);
    await waitFor(
      "the links gone",
      async () => (await c.iface(b, "x1")) === undefined && (await c.iface(far, "y1")) === undefined,
      8000,
    );
    expect(await c.iface(a, "x0")).toBeUndefined();
    expect(await c.iface(a, "y0")).toBeUndefined();
    const left = (await c.etcdKeys()).filter((k) => /\/v1\/(links|vni|nodes\/[^/]+\/links)\//.test(k));
    expect(left).toEqual([]);
    await c.stopAllAndAssertClean();
  }, 60_000);
});
