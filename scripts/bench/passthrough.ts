// Passthrough overhead: ADD+DEL of an ineligible pod through ratchet (delegate bridge +
// host-local) against calling bridge directly, interleaved in one run on one namespace.
// Prints medians, the overhead, the ratio and ratchet's peak RSS. Run as root:
//   node_modules/.bin/bun scripts/bench/passthrough.ts [ROUNDS]
import { copyFileSync, mkdtempSync, readdirSync, readlinkSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startApiServer } from "../../test/support/apiserver.ts";
import { ARGS, ETCD, median, report, table, timed } from "./support.ts";

const ROUNDS = Number(ARGS[0] ?? 60);
const CNI_PATH = "/usr/lib/cni";
const tag = `rb${process.pid.toString(36).slice(-4)}`;
const netns = `${tag}ns`;
const dir = mkdtempSync(join(tmpdir(), "ratchet-bench-"));
// Installed as on a node: the agent (ratchet-child) beside the plugin; it reads the pod from
// a stand-in API server, which says it is not a ratchet pod.
const BIN = join(dir, "ratchet");
copyFileSync(process.env.RATCHET_BIN ?? join(import.meta.dir, "..", "..", "bin", "ratchet"), BIN);
symlinkSync("ratchet", join(dir, "ratchet-child"));
// Pods scheduled to the node the agent watches (node_name), as on a real node.
const api = startApiServer({ dir, node: "bench-node" });
api.putPod({
  kind: "Pod",
  metadata: { name: "bench-pod", namespace: "default", labels: { app: "bench" } },
  spec: {},
});

const bridge = (name: string) => ({
  type: "bridge",
  bridge: `${tag}br`,
  isGateway: true,
  ipam: { type: "host-local", subnet: "10.231.0.0/16", dataDir: join(dir, `ipam-${name}`) },
});
const direct = { cniVersion: "1.0.0", name: "direct", ...bridge("direct") };
const viaRatchet = {
  cniVersion: "1.0.0",
  name: "ratchet",
  type: "ratchet",
  etcd_endpoints: [ETCD],
  kubeconfig: api.writeKubeconfig(dir, { auth: "token" }),
  node_name: "bench-node",
  log_file: join(dir, "ratchet.log"),
  child_socket: join(dir, "child.sock"),
  delegate: bridge("ratchet"),
};

function env(command: string, id: string): Record<string, string> {
  return {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    CNI_COMMAND: command,
    CNI_CONTAINERID: id,
    CNI_NETNS: `/var/run/netns/${netns}`,
    CNI_IFNAME: "eth0",
    CNI_PATH,
    CNI_ARGS: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=bench-pod",
  };
}

async function ip(...args: string[]): Promise<void> {
  const p = Bun.spawn({ cmd: ["ip", ...args], stdout: "ignore", stderr: "ignore" });
  await p.exited;
}

const samples = {
  directAdd: [] as number[],
  directDel: [] as number[],
  ratchetAdd: [] as number[],
  ratchetDel: [] as number[],
  rss: [] as number[],
};
/** API requests about single pods (GETs) during the measured rounds: the pod cache makes them 0. */
let podRequests = 0;
await ip("netns", "add", netns);
try {
  // One warm-up round each: page cache, host-local's directory.
  let mark = 0;
  for (let i = -1; i < ROUNDS; i++) {
    if (i === 0) mark = api.requests.length;
    const id = `bench-${i + 1}`;
    const d1 = await timed([join(CNI_PATH, "bridge")], env("ADD", `d${id}`), JSON.stringify(direct));
    const d2 = await timed([join(CNI_PATH, "bridge")], env("DEL", `d${id}`), JSON.stringify(direct));
    const r1 = await timed([BIN], env("ADD", `r${id}`), JSON.stringify(viaRatchet));
    const r2 = await timed([BIN], env("DEL", `r${id}`), JSON.stringify(viaRatchet));
    if (i < 0) continue;
    samples.directAdd.push(d1.ms);
    samples.directDel.push(d2.ms);
    samples.ratchetAdd.push(r1.ms);
    samples.ratchetDel.push(r2.ms);
    samples.rss.push(r1.maxRssKiB, r2.maxRssKiB);
  }
  podRequests = api.requests.slice(mark).filter((r) => r.path.startsWith("/api/v1/namespaces/")).length;
} finally {
  for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/1`) === join(dir, "ratchet.log"))
        process.kill(Number(pid), "SIGKILL");
    } catch {
      // gone, or not ours
    }
  }
  await api.stop();
  await ip("netns", "delete", netns);
  await ip("link", "delete", `${tag}br`);
  rmSync(dir, { recursive: true, force: true });
}

const row = (what: string, r: number[], d: number[]) => ({
  command: what,
  "bridge ms": median(d),
  "ratchet ms": median(r),
  "overhead ms": median(r) - median(d),
  ratio: median(r) / median(d),
});
const add = row("ADD", samples.ratchetAdd, samples.directAdd);
const del = row("DEL", samples.ratchetDel, samples.directDel);
const both = row(
  "ADD+DEL",
  samples.ratchetAdd.map((x, i) => x + (samples.ratchetDel[i] as number)),
  samples.directAdd.map((x, i) => x + (samples.directDel[i] as number)),
);
report(
  {
    rounds: ROUNDS,
    bridgeAddMs: add["bridge ms"],
    ratchetAddMs: add["ratchet ms"],
    bridgeDelMs: del["bridge ms"],
    ratchetDelMs: del["ratchet ms"],
    peakRssMedianMiB: median(samples.rss) / 1024,
    peakRssMaxMiB: Math.max(...samples.rss) / 1024,
    apiRequestsPerAddDel: podRequests / ROUNDS,
  },
  [
    `passthrough: ${ROUNDS} rounds, medians, interleaved in one run`,
    table([add, del, both]),
    `ratchet peak RSS: median ${(median(samples.rss) / 1024).toFixed(1)} MiB, max ${(Math.max(...samples.rss) / 1024).toFixed(1)} MiB`,
    `Kubernetes API requests per ADD+DEL (pod reads): ${(podRequests / ROUNDS).toFixed(2)}`,
  ],
);
