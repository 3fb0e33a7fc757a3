// The node agent's cost, side by side in one run (as root):
//  - warm: ADD+DEL of an ordinary Kubernetes pod through ratchet (the agent reads the pod
//    from the API) against the delegate alone;
//  - cold: the first call on a node, which starts the agent;
//  - the agent's RSS at rest and after 1000 more requests.
//   node_modules/.bin/bun scripts/bench/agent.ts [ROUNDS]
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

const ROUNDS = Number(ARGS[0] ?? 40);
/** Requests sent to the warm agent before its RSS is read again. */
const LOAD = Number(ARGS[1] ?? 1000);
const REPO = join(import.meta.dir, "..", "..");
const dir = mkdtempSync(join(tmpdir(), "ratchet-bench-agent-"));
const bin = join(dir, "ratchet");
copyFileSync(process.env.RATCHET_BIN ?? join(REPO, "bin", "ratchet"), bin);
symlinkSync("ratchet", join(dir, "ratchet-child"));
const netns = `rba${process.pid.toString(36).slice(-4)}`;
// Pods scheduled to the node the agent watches (node_name), as on a real node.
const api = startApiServer({ dir, node: "bench-node" });
api.putPod({
  kind: "Pod",
  metadata: { name: "web", namespace: "default", labels: { app: "web" } },
  spec: {},
});

const conf = (socket: string) => ({
  cniVersion: "1.0.0",
  name: "bench",
  type: "ratchet",
  etcd_endpoints: [ETCD],
  kubeconfig: api.writeKubeconfig(dir, { auth: "token" }),
  node_name: "bench-node",
  log_file: join(dir, "ratchet.log"),
  child_socket: socket,
  delegate: { type: "loopback" },
});
const loopback = { cniVersion: "1.0.0", name: "bench", type: "loopback" };
const env = (command: string, id: string, k8s = true): Record<string, string> => ({
  PATH: process.env.PATH ?? "/usr/bin:/bin",
  CNI_COMMAND: command,
  CNI_CONTAINERID: id,
  CNI_NETNS: `/var/run/netns/${netns}`,
  CNI_IFNAME: "lo",
  CNI_PATH: "/usr/lib/cni",
  ...(k8s ? { CNI_ARGS: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web" } : {}),
});

function agentPids(): number[] {
  const log = join(dir, "ratchet.log");
  return readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        return readlinkSync(`/proc/${d}/fd/1`) === log;
      } catch {
        return false;
      }
    })
    .map(Number);
}
const rssMiB = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) / 1024;

const proc = Bun.spawn({ cmd: ["ip", "netns", "add", netns] });
await proc.exited;
const s = { direct: [] as number[], warm: [] as number[], plain: [] as number[], cold: [] as number[] };
let rest = 0;
let loaded = 0;
try {
  const warmConf = JSON.stringify(conf(join(dir, "warm", "child.sock")));
  for (let i = -1; i < ROUNDS; i++) {
    const d = await timed(["/usr/lib/cni/loopback"], env("ADD", `d${i}`), JSON.stringify(loopback));
    const w = await timed([bin], env("ADD", `w${i}`), warmConf);
    const p = await timed([bin], env("ADD", `p${i}`, false), warmConf);
    if (i < 0) continue; // the first round starts the agent
    s.direct.push(d.ms);
    s.warm.push(w.ms);
    s.plain.push(p.ms);
  }
  // Cold: a fresh socket each time, so every call starts (and waits for) a new agent.
  for (let i = 0; i < Math.min(ROUNDS, 10); i++) {
    const c = await timed(
      [bin],
      env("ADD", `c${i}`),
      JSON.stringify(conf(join(dir, `cold${i}`, "child.sock"))),
    );
    s.cold.push(c.ms);
  }
  const [warmPid] = agentPids().filter((pid) => readlinkSync(`/proc/${pid}/cwd`) !== "");
  rest = rssMiB(warmPid as number);
  // LOAD more requests to the warm agent, 8 at a time.
  for (let i = 0; i < LOAD; i += 8) {
    await Promise.all(Array.from({ length: 8 }, (_, j) => timed([bin], env("ADD", `m${i + j}`), warmConf)));
  }
  loaded = rssMiB(warmPid as number);
} finally {
  for (const pid of agentPids()) process.kill(pid, "SIGKILL");
  await Bun.spawn({ cmd: ["ip", "netns", "delete", netns] }).exited;
  await api.stop();
  rmSync(dir, { recursive: true, force: true });
}

const dm = median(s.direct);
const rows = [
  { call: "ADD, delegate alone", ms: dm, "overhead ms": 0, ratio: 1 },
  {
    call: "ADD via ratchet, no K8S args (no agent)",
    ms: median(s.plain),
    "overhead ms": median(s.plain) - dm,
    ratio: median(s.plain) / dm,
  },
  {
    call: "ADD via ratchet, K8S pod, warm agent",
    ms: median(s.warm),
    "overhead ms": median(s.warm) - dm,
    ratio: median(s.warm) / dm,
  },
  {
    call: "ADD via ratchet, cold (starts the agent)",
    ms: median(s.cold),
    "overhead ms": median(s.cold) - dm,
    ratio: median(s.cold) / dm,
  },
];
report(
  {
    rounds: ROUNDS,
    load: LOAD,
    delegateAddMs: dm,
    plainAddMs: median(s.plain),
    warmAddMs: median(s.warm),
    coldAddMs: median(s.cold),
    agentRestMiB: rest,
    agentLoadedMiB: loaded,
  },
  [
    `node agent: ${ROUNDS} rounds, medians, interleaved in one run (delegate: loopback)`,
    table(rows),
    `agent RSS: ${rest.toFixed(1)} MiB after ${ROUNDS * 2} requests, ${loaded.toFixed(1)} MiB after ${LOAD} more`,
  ],
);
