// Linking cost, side by side in one run (as root, etcd at $RATCHET_TEST_ETCD or 127.0.0.1:2379):
//  - the second pod of a same-node pair (its ADD builds the veth) against Debian's ptp +
//    host-local ADD (which also builds a veth and addresses it);
//  - PAIRS pairs linked one after another, then 8 at a time; etcd round trips per ADD.
//   node_modules/.bin/bun scripts/bench/link.ts [PAIRS]
import { Etcd3 } from "etcd3";
import {
  copyFileSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startApiServer } from "../../test/support/apiserver.ts";
import { ARGS, ETCD, median, report, table, timed } from "./support.ts";

const PAIRS = Number(ARGS[0] ?? 100);
const REPO = join(import.meta.dir, "..", "..");
const dir = mkdtempSync(join(tmpdir(), "ratchet-bench-link-"));
const bin = join(dir, "ratchet");
copyFileSync(process.env.RATCHET_BIN ?? join(REPO, "bin", "ratchet"), bin);
symlinkSync("ratchet", join(dir, "ratchet-child"));
const tag = `rbl${process.pid.toString(36).slice(-3)}`;
const prefix = `/ratchet-bench/${tag}`;
// Pods scheduled to the node the agent watches (node_name), as on a real node.
const api = startApiServer({ dir, node: "bench-node" });

// Pair i: a-i declares one link to b-i with addresses; b-i only opts in.
for (let i = 0; i < PAIRS; i++) {
  const net = `10.${100 + (i >> 8)}.${i & 255}`;
  const links = [
    {
      peer: `b-${i}`,
      local_ifname: "net1",
      peer_ifname: "net1",
      local_ip: `${net}.1/30`,
      peer_ip: `${net}.2/30`,
    },
  ];
  api.putPod({
    kind: "Pod",
    metadata: {
      name: `a-${i}`,
      namespace: "default",
      labels: { ratchet: "true" },
      annotations: { "ratchet/links": JSON.stringify(links) },
    },
    spec: {},
  });
  api.putPod({
    kind: "Pod",
    metadata: { name: `b-${i}`, namespace: "default", labels: { ratchet: "true" } },
    spec: {},
  });
}
const conf = JSON.stringify({
  cniVersion: "1.0.0",
  name: "bench",
  type: "ratchet",
  etcd_endpoints: [ETCD],
  etcd_prefix: prefix,
  parent_address: "10.99.99.1",
  kubeconfig: api.writeKubeconfig(dir, { auth: "token" }),
  node_name: "bench-node",
  log_file: join(dir, "ratchet.log"),
  child_socket: join(dir, "run", "child.sock"),
  delegate: { type: "loopback" },
  boot_network: { type: "loopback" },
});
const ptp = JSON.stringify({
  cniVersion: "1.0.0",
  name: "ptp-bench",
  type: "ptp",
  ipam: { type: "host-local", subnet: "10.98.0.0/16", dataDir: join(dir, "ipam") },
});

const namespaces: string[] = [];
async function netns(name: string): Promise<string> {
  await Bun.spawn({ cmd: ["ip", "netns", "add", name] }).exited;
  namespaces.push(name);
  return `/var/run/netns/${name}`;
}
const env = (
  command: string,
  id: string,
  ns: string,
  ifname: string,
  pod?: string,
): Record<string, string> => ({
  PATH: process.env.PATH ?? "/usr/bin:/bin",
  CNI_COMMAND: command,
  CNI_CONTAINERID: id,
  CNI_NETNS: ns,
  CNI_IFNAME: ifname,
  CNI_PATH: "/usr/lib/cni",
  ...(pod ? { CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=${pod}` } : {}),
});
const agents = () =>
  readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        return readlinkSync(`/proc/${d}/fd/1`) === join(dir, "ratchet.log");
      } catch {
        return false;
      }
    });

const second: number[] = [];
const ptpAdd: number[] = [];
let seqMs = 0;
let parMs = 0;
try {
  const half = Math.floor(PAIRS / 2);
  // Sequential: pair i's a then b (b's ADD builds the veth), next to one ptp ADD.
  const t0 = performance.now();
  for (let i = 0; i < half; i++) {
    const na = await netns(`${tag}a${i}`);
    const nb = await netns(`${tag}b${i}`);
    const np = await netns(`${tag}p${i}`);
    await timed([bin], env("ADD", `a${i}`, na, "lo", `a-${i}`), conf);
    const b = await timed([bin], env("ADD", `b${i}`, nb, "lo", `b-${i}`), conf);
    const p = await timed(["/usr/lib/cni/ptp"], env("ADD", `p${i}`, np, "eth0"), ptp);
    if (i > 0) {
      second.push(b.ms);
      ptpAdd.push(p.ms);
    }
  }
  seqMs = performance.now() - t0;
  // 8 at a time: the other pairs, both pods of each pair started together.
  const t1 = performance.now();
  for (let i = half; i < PAIRS; i += 4) {
    const batch = Array.from({ length: Math.min(4, PAIRS - i) }, (_, k) => i + k);
    await Promise.all(
      batch.flatMap((j) => [
        netns(`${tag}a${j}`).then((ns) => timed([bin], env("ADD", `a${j}`, ns, "lo", `a-${j}`), conf)),
        netns(`${tag}b${j}`).then((ns) => timed([bin], env("ADD", `b${j}`, ns, "lo", `b-${j}`), conf)),
      ]),
    );
  }
  parMs = performance.now() - t1;
  const trips = readFileSync(join(dir, "ratchet.log"), "utf8")
    .split("\n")
    .filter((l) => l.includes('"attached"'))
    .map((l) => JSON.parse(l) as { etcdRoundTrips: number; built: string[] })
    .slice(0, half * 2);
  const firstTrips = trips.filter((t) => t.built.length === 0).map((t) => t.etcdRoundTrips);
  const secondTrips = trips.filter((t) => t.built.length > 0).map((t) => t.etcdRoundTrips);
  const dm = median(ptpAdd);
  report(
    {
      pairs: PAIRS,
      ptpAddMs: dm,
      secondAddMs: median(second),
      firstPodRoundTrips: median(firstTrips),
      secondPodRoundTrips: median(secondTrips),
      secondPodRoundTripsMax: Math.max(...secondTrips),
      seqMsPerPair: seqMs / half,
      parallelMsPerPair: parMs / (PAIRS - half),
    },
    [
      `linking: ${PAIRS} pairs on one node (boot network: loopback), medians, in one run`,
      table([
        { ADD: "ptp + host-local (Debian)", ms: dm, ratio: 1 },
        {
          ADD: "ratchet, second pod of a pair (builds the veth)",
          ms: median(second),
          ratio: median(second) / dm,
        },
      ]),
      `pairs linked one after another: ${half} in ${(seqMs / 1000).toFixed(2)} s (${(seqMs / half).toFixed(1)} ms per pair, ptp ADD included)`,
      `pairs linked 8 ADDs at a time: ${PAIRS - half} in ${(parMs / 1000).toFixed(2)} s (${(parMs / (PAIRS - half)).toFixed(1)} ms per pair)`,
      `etcd round trips per ADD: first pod median ${median(firstTrips)}, second pod median ${median(secondTrips)} (max ${Math.max(...secondTrips)})`,
    ],
  );
} finally {
  for (const pid of agents()) process.kill(Number(pid), "SIGKILL");
  for (const ns of namespaces) await Bun.spawn({ cmd: ["ip", "netns", "delete", ns] }).exited;
  const etcd = new Etcd3({ hosts: ETCD });
  await etcd.delete().prefix(`${prefix}/`);
  etcd.close();
  await api.stop();
  rmSync(dir, { recursive: true, force: true });
}
