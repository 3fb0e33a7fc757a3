// Assertions the containerd scenarios share: link ends read from the kernel, pings, and the
// records ratchet keeps in etcd for a sandbox.
import { expect } from "bun:test";
import { readFileSync } from "node:fs";
import { vniOf } from "../../../src/store/keys.ts";
import { waitFor } from "../child.ts";
import type { IfaceInfo } from "../cluster.ts";
import type { CriBed, CriNode } from "./bed.ts";
import type { Sandbox } from "./sandbox.ts";

/** Default VXLAN overhead over an IPv4 underlay of MTU 1500. */
export const MAX_VXLAN_MTU = 1450;

/** Waits for a link to appear in a pod's netns; the error carries the nodes' logs. */
export async function waitIface(
  bed: CriBed,
  s: Sandbox,
  ifname: string,
  timeoutMs = 10_000,
): Promise<IfaceInfo> {
  try {
    const i = await waitFor(`${ifname} in ${s.name} on ${s.node.name}`, () => s.iface(ifname), timeoutMs);
    if (i === undefined) throw new Error("waitFor returned nothing");
    return i;
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${bed.logs()}`);
  }
}

/** A link end that is up, with exactly these global addresses (and MTU / MAC when given). */
export async function expectEnd(
  bed: CriBed,
  s: Sandbox,
  ifname: string,
  want: { kind: "veth" | "vxlan"; ips: string[]; mtu?: number; mac?: string },
): Promise<IfaceInfo> {
  await waitIface(bed, s, ifname);
  // Operstate follows a moment after the link comes up (linkwatch): wait for it.
  const settled = (x: IfaceInfo | undefined) =>
    x?.up && (x.state === "UP" || (want.kind === "vxlan" && x.state === "UNKNOWN"));
  await waitFor(`${ifname} of ${s.name} up`, async () => settled(await s.iface(ifname)), 3000).catch(
    () => undefined,
  );
  const i = await waitIface(bed, s, ifname);
  expect(i.kind).toBe(want.kind);
  expect(i.up).toBe(true);
  expect(want.kind === "veth" ? ["UP"] : ["UP", "UNKNOWN"]).toContain(i.state);
  // IPv6 addresses pass through "tentative" first; the address list is what matters here.
  expect((await s.addrs(ifname)).sort()).toEqual([...want.ips].sort());
  if (want.mtu !== undefined) expect(i.mtu).toBe(want.mtu);
  if (want.mac !== undefined) expect(i.mac).toBe(want.mac);
  return i;
}

/** Both VXLAN ends of one link: one VNI, each remote the other node's underlay address. */
export function expectTunnel(a: IfaceInfo, aNode: CriNode, b: IfaceInfo, bNode: CriNode): void {
  expect(a.kind).toBe("vxlan");
  expect(b.kind).toBe("vxlan");
  expect(a.vni).toBeDefined();
  expect(a.vni).toBe(b.vni as number);
  expect(a.remote).toBe(bNode.node.underlay);
  expect(b.remote).toBe(aNode.node.underlay);
  expect(a.mtu).toBe(b.mtu);
  expect(a.mtu).toBeLessThanOrEqual(MAX_VXLAN_MTU);
}

export async function expectPing(bed: CriBed, from: Sandbox, ip: string, timeoutMs = 8000): Promise<void> {
  if (!(await from.ping(ip, timeoutMs))) {
    const names = await from.ifaceNames().catch((e: Error) => [e.message]);
    throw new Error(
      `no ping from ${from.name} (${from.node.name}) to ${ip}; its links: ${names.join(", ")}\n${bed.logs()}`,
    );
  }
}

/** Waits until a link is gone from a pod's netns. */
export async function waitGone(s: Sandbox, ifname: string, timeoutMs = 10_000): Promise<void> {
  await waitFor(
    `${ifname} gone from ${s.name}`,
    async () => (await s.iface(ifname)) === undefined,
    timeoutMs,
  );
}

/** The address of eth0 (from the bridge plugin) and the IP containerd reports for the sandbox. */
export async function expectEth0(s: Sandbox): Promise<string> {
  const addrs = await s.addrs("eth0");
  expect(addrs).toHaveLength(1);
  const addr = addrs[0] as string;
  expect(addr).toMatch(/^10\.244\.1\.\d+\/24$/);
  const st = await s.status();
  expect(st.status.state).toBe("SANDBOX_READY");
  expect(st.status.network?.ip).toBe(addr.split("/")[0] as string);
  return addr;
}

/** ratchet's endpoint record of a pod, as JSON (undefined when absent). */
export async function endpointRecord(bed: CriBed, s: Sandbox): Promise<Record<string, unknown> | undefined> {
  const entries = await bed.cluster.etcdEntries();
  const v = entries.get(`${bed.cluster.etcdPrefix}/v1/endpoints/${s.namespace}/${s.name}`);
  return v === undefined ? undefined : (JSON.parse(v) as Record<string, unknown>);
}

/**
 * The endpoint record names this sandbox: containerd's sandbox id and its node; its netns is
 * node-local and never in etcd, but in the agent's state beside its socket.
 */
export async function expectEndpoint(bed: CriBed, s: Sandbox): Promise<void> {
  const e = await endpointRecord(bed, s);
  expect(e).toBeDefined();
  expect(e?.containerId).toBe(s.id);
  expect(e?.netns).toBeUndefined();
  const state = JSON.parse(readFileSync(`${s.node.node.socket}.state.json`, "utf8")) as {
    containers: Record<string, { netns: string }>;
  };
  expect(state.containers[s.id]?.netns).toBe(s.netns);
  expect(e?.ifname).toBe("eth0");
  expect(e?.node).toBe(s.node.node.underlay);
}

/** The link records in etcd: kind and, per end ("ns/pod"), the container it was built for. */
export async function linkRecords(
  bed: CriBed,
): Promise<Array<{ kind: string; vni?: number; ends: Record<string, { containerId: string }> }>> {
  const from = `${bed.cluster.etcdPrefix}/v1/links/`;
  const out: Array<{ kind: string; vni?: number; ends: Record<string, { containerId: string }> }> = [];
  // Pair chunks: each holds up to LINK_CHUNK links of one pair; link i has VNI vniOf(block, i).
  for (const [k, v] of await bed.cluster.etcdEntries()) {
    if (!k.startsWith(from)) continue;
    const chunk = JSON.parse(v) as {
      kind: string;
      block?: number;
      ends: Record<string, { containerId: string }>;
      links: unknown[];
    };
    chunk.links.forEach((_, i) => {
      out.push({
        kind: chunk.kind,
        ...(chunk.block !== undefined ? { vni: vniOf(chunk.block, i) } : {}),
        ends: chunk.ends,
      });
    });
  }
  return out;
}
