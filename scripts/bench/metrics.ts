// What observability costs, side by side in one run (as root, etcd at $RATCHET_TEST_ETCD):
//  - the agent's CNI latency with metrics on (metrics_address set, network-status annotation,
//    /metrics scraped every 200 ms meanwhile) and off: ADDs of linked pairs alternating between
//    two agents, medians and ratio;
//  - a scrape of ENDS link ends (veth pairs between pods, 10 ends per pod netns) over HTTP,
//    by curl: its duration, and the longest the event loop went without a turn meanwhile
//    (what a CNI request arriving then would wait at most). WORKER=0 reads on the main thread.
//   node_modules/.bin/bun scripts/bench/metrics.ts [PAIRS] [ENDS]
import { Etcd3 } from "etcd3";
import { copyFileSync, mkdtempSync, readdirSync, readlinkSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { groupOf, markOf } from "../../src/links/builder.ts";
import { Logger } from "../../src/log.ts";
import { addVethPair, listLinkCounters, listLinks, netlinkRequestResults } from "../../src/netlink/index.ts";
import { inThreadReader, WorkerReader } from "../../src/observe/counters-reader.ts";
import { ObserveServer } from "../../src/observe/http.ts";
import { Observer } from "../../src/observe/observer.ts";
import { startApiServer } from "../../test/support/apiserver.ts";
import { ARGS, ETCD, median, report, table, timed } from "./support.ts";

const PAIRS = Number(ARGS[0] ?? 40);
const ENDS = Number(ARGS[1] ?? 10_000);
const PER_POD = 10;
const REPO = join(import.meta.dir, "..", "..");
const dir = mkdtempSync(join(tmpdir(), "ratchet-bench-metrics-"));
const bin = join(dir, "ratchet");
copyFileSync(process.env.RATCHET_BIN ?? join(REPO, "bin", "ratchet"), bin);
symlinkSync("ratchet", join(dir, "ratchet-child"));
const tag = `rbm${process.pid.toString(36).slice(-3)}`;
const prefix = `/ratchet-bench/${tag}`;
const api = startApiServer({ dir, node: "bench-node" });
const namespaces: string[] = [];

/** Runs `ip -batch` lines (netns add/delete) in one process. */
async function ipBatch(lines: string[]): Promise<void> {
  const p = Bun.spawn({
    cmd: ["ip", "-force", "-batch", "-"],
    stdin: new TextEncoder().encode(`${lines.join("\n")}\n`),
  });
  if ((await p.exited) !== 0) throw new Error("ip -batch failed");
}

// ---- CNI latency, metrics on and off ------------------------------------------------------

for (const side of ["on", "off"])
  for (let i = 0; i < PAIRS; i++) {
    const link = { peer: `${side}-b-${i}`, local_ifname: "net1", peer_ifname: "net1" };
    const net = `10.${side === "on" ? 120 : 121}.${i & 255}`;
    Object.assign(link, { local_ip: `${net}.1/30`, peer_ip: `${net}.2/30` });
    const meta = (name: string, links?: unknown) => ({
      name,
      namespace: "default",
      labels: { ratchet: "true" },
      ...(links ? { annotations: { "ratchet/links": JSON.stringify(links) } } : {}),
    });
    api.putPod({ kind: "Pod", metadata: meta(`${side}-a-${i}`, [link]), spec: {} });
    api.putPod({ kind: "Pod", metadata: meta(`${side}-b-${i}`), spec: {} });
  }
api.putPod({
  kind: "Pod",
  metadata: { name: "plain", namespace: "default", labels: { app: "plain" } },
  spec: {},
});
const metricsAddress = (() => {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = s.port;
  s.stop(true);
  return `127.0.0.1:${port}`;
})();
const conf = (side: "on" | "off") =>
  JSON.stringify({
    cniVersion: "1.0.0",
    name: "bench",
    type: "ratchet",
    etcd_endpoints: [ETCD],
    etcd_prefix: `${prefix}/${side}`,
    parent_address: "10.99.99.1",
    kubeconfig: api.writeKubeconfig(dir, { auth: "token", name: `kubeconfig-${side}` }),
    node_name: "bench-node",
    log_file: join(dir, `ratchet-${side}.log`),
    child_socket: join(dir, side, "child.sock"),
    delegate: { type: "loopback" },
    boot_network: { type: "loopback" },
    metrics_address: side === "on" ? metricsAddress : "",
    network_status_annotation: side === "on",
  });
const env = (command: string, id: string, ns: string, pod: string): Record<string, string> => ({
  PATH: process.env.PATH ?? "/usr/bin:/bin",
  CNI_COMMAND: command,
  CNI_CONTAINERID: id,
  CNI_NETNS: `/var/run/netns/${ns}`,
  CNI_IFNAME: "eth0",
  CNI_PATH: "/usr/lib/cni",
  CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=${pod}`,
});
const agents = () =>
  readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        return readlinkSync(`/proc/${d}/fd/1`).startsWith(join(dir, "ratchet-"));
      } catch {
        return false;
      }
    });

const add: Record<"on" | "off", { first: number[]; second: number[] }> = {
  on: { first: [], second: [] },
  off: { first: [], second: [] },
};
let scrapes = 0;
const scrapeMs: number[] = [];
const stallMs: number[] = [];
const collectMs: number[] = [];
try {
  const names: string[] = [];
  for (const side of ["on", "off"])
    for (let i = 0; i < PAIRS; i++) names.push(`${tag}${side}a${i}`, `${tag}${side}b${i}`);
  await ipBatch(names.map((n) => `netns add ${n}`));
  namespaces.push(...names);
  let scraping = true;
  const scraper = (async () => {
    while (scraping) {
      await fetch(`http://${metricsAddress}/metrics`)
        .then((r) => r.text())
        .then(() => scrapes++)
        .catch(() => undefined);
      await Bun.sleep(200);
    }
  })();
  // Alternate: pair i on, pair i off; the first round of each starts its agent.
  for (let i = -1; i < PAIRS; i++) {
    for (const side of ["on", "off"] as const) {
      const k = Math.max(i, 0);
      if (i < 0) {
        await timed([bin], env("ADD", `${side}-warm`, `${tag}${side}a0`, "plain"), conf(side)).catch(
          () => undefined,
        );
        continue;
      }
      const a = await timed(
        [bin],
        env("ADD", `${side}a${k}`, `${tag}${side}a${k}`, `${side}-a-${k}`),
        conf(side),
      );
      const b = await timed(
        [bin],
        env("ADD", `${side}b${k}`, `${tag}${side}b${k}`, `${side}-b-${k}`),
        conf(side),
      );
      add[side].first.push(a.ms);
      add[side].second.push(b.ms);
    }
  }
  scraping = false;
  await scraper;

  // ---- one scrape of ENDS link ends ------------------------------------------------------
  const pods = Math.ceil(ENDS / PER_POD);
  const podNs = Array.from({ length: pods }, (_, i) => `${tag}s${i}`);
  await ipBatch(podNs.map((n) => `netns add ${n}`));
  namespaces.push(...podNs);
  const containers = podNs.map((ns, i) => ({
    pod: `lab/r${i}`,
    netns: `/var/run/netns/${ns}`,
    links: {} as Record<string, string>,
  }));
  // Pod i's end k goes to pod i+1 (end k+5): every pod has PER_POD ends.
  for (let i = 0; i < pods; i++) {
    for (let k = 0; k < PER_POD / 2; k++) {
      const a = containers[i];
      const b = containers[(i + 1) % pods];
      if (!a || !b) continue;
      const ea = `lab/r${i}/e${k}`;
      const eb = `lab/r${(i + 1) % pods}/e${k + PER_POD / 2}`;
      const key = ea < eb ? `${ea}:${eb}` : `${eb}:${ea}`;
      const end = (name: string, netns: string) => ({
        name,
        ns: netns,
        alias: markOf(key),
        group: groupOf(netns),
      });
      addVethPair({ a: end(`e${k}`, a.netns), b: end(`e${k + PER_POD / 2}`, b.netns) });
      a.links[key] = `e${k}`;
      b.links[key] = `e${k + PER_POD / 2}`;
    }
  }
  const counters = new WorkerReader(
    new URL("../../src/observe/counters-worker.ts", import.meta.url).href,
    inThreadReader(listLinkCounters),
    new Logger("bench", "warn"),
  );
  if (process.env.WORKER === "0") counters.close();
  const marks = new Map(containers.flatMap((c) => Object.keys(c.links)).map((k) => [k, markOf(k)]));
  const observer = new Observer(new Logger("bench", "error"), { networkStatus: false });
  observer.bind({
    node: "bench-node",
    // Marks are computed once per link, as the agent's binding does.
    view: { containers: () => containers, mark: (link) => marks.get(link) ?? markOf(link) },
    kernel: {
      // As the agent reads: in a worker thread (WORKER=0: on the main thread).
      readCounters: counters.read,
      ifaces: (netns) =>
        new Map(listLinks(netns).map((l) => [l.name, { mac: l.mac, alias: l.alias, ips: [] }])),
      results: netlinkRequestResults,
    },
    api: () => undefined,
    uidOf: () => undefined,
    ready: async () => [],
    etcdResults: () => new Map(),
    kubeResults: () => new Map(),
  });
  // Scraped over HTTP as Prometheus would, by curl (another process: this one only serves).
  const server = new ObserveServer(`127.0.0.1:0`, observer, new Logger("bench", "warn"));
  for (let r = 0; r < 6; r++) {
    // A timer that wants to run every millisecond: its longest gap is the longest stall.
    let last = performance.now();
    let worst = 0;
    const tick = setInterval(() => {
      const now = performance.now();
      worst = Math.max(worst, now - last);
      last = now;
    }, 1);
    const t0 = performance.now();
    const curl = Bun.spawn({
      cmd: ["curl", "-sf", `http://127.0.0.1:${server.port}/metrics`],
      stdout: "pipe",
    });
    const text = await new Response(curl.stdout).text();
    if ((await curl.exited) !== 0) throw new Error("curl /metrics failed");
    const ms = performance.now() - t0;
    clearInterval(tick);
    worst = Math.max(worst, performance.now() - last);
    const up = Number(/ratchet_link_ends\{state="up"\} (\d+)/.exec(text)?.[1]);
    if (up !== pods * PER_POD) throw new Error(`the scrape saw ${up} ends up, expected ${pods * PER_POD}`);
    const collect = Number(/^ratchet_link_collect_duration_seconds (\S+)$/m.exec(text)?.[1]) * 1000;
    if (r === 0) continue; // warm-up
    scrapeMs.push(ms);
    stallMs.push(worst);
    collectMs.push(collect);
  }
  server.stop();
  counters.close();
} finally {
  for (const pid of agents()) process.kill(Number(pid), "SIGKILL");
  // Deleting a netns takes its veth ends along, far faster than deleting links one by one.
  await ipBatch(namespaces.map((n) => `netns delete ${n}`)).catch(() => undefined);
  const etcd = new Etcd3({ hosts: ETCD });
  await etcd.delete().prefix(`${prefix}/`);
  etcd.close();
  await api.stop();
  rmSync(dir, { recursive: true, force: true });
}

const on = median(add.on.second);
const off = median(add.off.second);
const ends = Math.ceil(ENDS / PER_POD) * PER_POD;
report(
  {
    pairs: PAIRS,
    addOnMs: on,
    addOffMs: off,
    ratio: on / off,
    firstAddOnMs: median(add.on.first),
    firstAddOffMs: median(add.off.first),
    scrapesDuringAdds: scrapes,
    ends,
    podNetns: ends / PER_POD,
    scrapeMs: median(scrapeMs),
    scrapeMaxMs: Math.max(...scrapeMs),
    collectMs: median(collectMs),
    stallMaxMs: Math.max(...stallMs),
  },
  [
    `observability: ${PAIRS} pairs per side, medians, alternating in one run (boot network: loopback)`,
    table([
      { ADD: "second pod (builds the veth), metrics off", ms: off, ratio: 1 },
      { ADD: "second pod (builds the veth), metrics on", ms: on, ratio: on / off },
      { ADD: "first pod (waits), metrics off", ms: median(add.off.first), ratio: 1 },
      {
        ADD: "first pod (waits), metrics on",
        ms: median(add.on.first),
        ratio: median(add.on.first) / median(add.off.first),
      },
    ]),
    `/metrics scraped ${scrapes} times meanwhile`,
    `scrape of ${ends} link ends in ${ends / PER_POD} pod netns: median ${median(scrapeMs).toFixed(1)} ms ` +
      `(max ${Math.max(...scrapeMs).toFixed(1)} ms; kernel reads ${median(collectMs).toFixed(1)} ms); ` +
      `longest stall of the event loop during a scrape ${Math.max(...stallMs).toFixed(1)} ms`,
  ],
);
