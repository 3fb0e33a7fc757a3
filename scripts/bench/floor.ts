// The plugin's per-call costs against their floors, side by side in one run (as root, etcd
// at $RATCHET_TEST_ETCD; scripts/bench.sh starts one), on the two-node test bed
// (test/support/cluster.ts) with the plugin installed as on a node (ratchet-child beside it,
// pods in a stand-in API server, bound to the node its agent watches). Each CNI call is a
// spawned process, timed to its exit; ratchet and its reference alternate run by run (which
// goes first alternates too), so the machine's noise hits both:
//  - `ratchet --version` against a Bun hello-world this run compiles with the same Bun and
//    the same compile options as scripts/build.ts (bytecode, minify, no autoloading): wall
//    time and peak RSS;
//  - a plain pod's ADD and DEL (no ratchet label; delegate bridge + host-local) against
//    bridge + host-local called directly (the same config and IPAM store);
//  - a linked pair on one node, boot network loopback as in link.ts: the first pod's ADD (its
//    peer not there yet) and the second pod's (builds the veth) against Debian's ptp +
//    host-local ADD; the first DEL of the pair (the second pod's: it removes the veth)
//    against ptp's DEL;
//  - a pair across the two nodes: the second pod's ADD (builds its VXLAN end) against the
//    same-node second ADD of the same round;
//  - node 1's agent's RSS at rest after the warm-up, then after the rounds and LOAD more
//    linked pairs and LOAD plain pods (ADDs PARALLEL at a time, each pod in a netns of its own).
// Medians and p95 of ROUNDS rounds after 2 warm-up rounds; every row says its target, judged
// on the medians. The figures are kept in bench/floor.json (with the date, nproc and the load
// average at the start) and the next run prints them in a "previous" column;
// RATCHET_BENCH_FLOOR_KEEP=1 leaves that file as it is. With --json the table goes to stderr
// and one JSON line of the figures to stdout. About a minute on 2 cores, most of it the load.
//   node_modules/.bin/bun scripts/bench/floor.ts [ROUNDS] [LOAD] [--json]
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { childPids, waitFor } from "../../test/support/child.ts";
import { cniEnv } from "../../test/support/cni.ts";
import {
  annotatedPod,
  type Cluster,
  ifindexIn,
  makeCluster,
  type Node,
  optInPod,
  type Pod,
  plainPod,
} from "../../test/support/cluster.ts";
import { BUN, installedBin, REPO, removeInstalledBin, run, uniqueName } from "../../test/support/env.ts";
import type { PodObject } from "../../test/support/pods.ts";
import { ARGS, JSON_OUT, median, p95, report, table, timed } from "./support.ts";

const ROUNDS = Number(ARGS[0] ?? 20);
/** Linked pairs and plain pods added before the agent's RSS is read again. */
const LOAD = Number(ARGS[1] ?? 500);
const WARM = 2;
const PARALLEL = 8;
const KEPT = join(REPO, "bench", "floor.json");
const startedAt = new Date().toISOString();
const loadAtStart = loadavg()[0] ?? Number.NaN;
/** What `nproc` prints. */
const cores = availableParallelism();

type Figures = Record<string, number | string>;
/** The last run's figures (none when the file is missing or unreadable). */
function kept(): Figures {
  try {
    return existsSync(KEPT) ? (JSON.parse(readFileSync(KEPT, "utf8")) as Figures) : {};
  } catch {
    return {};
  }
}
const previous = kept();

/** The pod as the scheduler leaves it: bound to the node, so the agent's pod watch has it. */
const on = (n: Node, pod: PodObject): PodObject => ({ ...pod, spec: { ...pod.spec, nodeName: n.name } });

/** One link with addresses, as in link.ts: 10.<base + i/256>.<i%256>.0/30. */
function linkTo(peer: string, i: number, base: number) {
  const net = `10.${base + (i >> 8)}.${i & 255}`;
  return [
    { peer, local_ifname: "net1", peer_ifname: "net1", local_ip: `${net}.1/30`, peer_ip: `${net}.2/30` },
  ];
}

/** The first then the second on even rounds, the other way round on odd ones. */
async function alternate<T>(
  round: number,
  first: () => Promise<T>,
  second: () => Promise<T>,
): Promise<[T, T]> {
  if (round % 2 === 0) {
    const a = await first();
    return [a, await second()];
  }
  const b = await second();
  return [await first(), b];
}

const status = (pid: number, field: "VmRSS" | "VmHWM") =>
  Number(new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) / 1024;

const samples: Record<string, number[]> = {};
// The run's circumstances, then the figures in the order they are measured.
const figures: Figures = {
  date: startedAt,
  nproc: cores,
  loadAverage: Number(loadAtStart.toFixed(2)),
  rounds: ROUNDS,
  load: LOAD,
  bootNetwork: "loopback",
};
const dir = mkdtempSync(join(process.env.RATCHET_TEST_WORK ?? tmpdir(), "ratchet-bench-floor-"));
const bridgeName = uniqueName("br");
let c: Cluster | undefined;
const t0 = performance.now();
try {
  // A compiled Bun hello-world: what any program compiled by this Bun costs to start.
  writeFileSync(join(dir, "hello.ts"), 'console.log("hello");\n');
  const hello = join(dir, "hello");
  const built = Bun.spawnSync({
    cmd: [
      BUN,
      "build",
      "--compile",
      "--bytecode",
      "--minify",
      "--format=esm",
      "--no-compile-autoload-dotenv",
      "--no-compile-autoload-bunfig",
      "hello.ts",
      "--outfile",
      hello,
    ],
    cwd: dir,
    stdout: "ignore",
    stderr: "pipe",
  });
  if (built.exitCode !== 0) throw new Error(`building the hello-world failed: ${built.stderr.toString()}`);

  const bin = installedBin();
  c = await makeCluster({ nodes: 2 });
  const [n1, n2] = [c.node(1), c.node(2)];
  const bridge = {
    type: "bridge",
    bridge: bridgeName,
    isGateway: true,
    ipam: { type: "host-local", subnet: "10.231.0.0/16", dataDir: join(dir, "ipam-bridge") },
  };
  const conf1 = n1.conf({ log_level: "info", delegate: bridge });
  const conf2 = n2.conf({ log_level: "info", delegate: bridge });
  // The delegate as ratchet runs it (it inherits cniVersion and name: the same IPAM store).
  const direct = { cniVersion: conf1.cniVersion, name: conf1.name, ...bridge };
  const ptp = {
    cniVersion: "1.0.0",
    name: "floor-ptp",
    type: "ptp",
    ipam: { type: "host-local", subnet: "10.98.0.0/16", dataDir: join(dir, "ipam-ptp") },
  };
  const loopback = { cniVersion: "1.0.0", name: "floor-lo", type: "loopback" };

  /** A CNI call of a pod through the installed plugin. */
  const call = (p: Pod, command: "ADD" | "DEL", conf: Record<string, unknown>) =>
    timed(
      [bin],
      cniEnv({
        command,
        conf,
        containerId: p.containerId,
        netns: p.netns.path,
        ifname: p.ifname,
        args: p.args,
      }) as Record<string, string>,
      JSON.stringify(conf),
    );
  /** A Debian plugin called directly on a sandbox. */
  const plugin = (p: Pod, command: "ADD" | "DEL", conf: { type: string }, ifname = "eth0") =>
    timed(
      [`/usr/lib/cni/${conf.type}`],
      cniEnv({ command, conf, containerId: p.containerId, netns: p.netns.path, ifname }) as Record<
        string,
        string
      >,
      JSON.stringify(conf),
    );

  // Round k's pods, in the API server before the agents start: a plain pod; a-k declares a
  // link to b-k (node 1); x-k on node 1 declares one to y-k on node 2.
  for (let k = 0; k < WARM + ROUNDS; k++) {
    c.putPod(on(n1, plainPod(`plain-${k}`)));
    c.putPod(on(n1, annotatedPod(`a-${k}`, linkTo(`b-${k}`, k, 100))));
    c.putPod(on(n1, optInPod(`b-${k}`)));
    c.putPod(on(n1, annotatedPod(`x-${k}`, linkTo(`y-${k}`, k, 110))));
    c.putPod(on(n2, optInPod(`y-${k}`)));
  }

  /** Node 1's agent (the process logging to its log file), its RSS read at rest after the warm-up. */
  let agent = 0;
  let tRounds = performance.now();
  for (let r = -WARM; r < ROUNDS; r++) {
    const k = r + WARM;
    if (r === 0) {
      const agents = childPids(n1.logFile);
      if (agents.length !== 1) throw new Error(`node 1 has ${agents.length} agents running, not one`);
      agent = agents[0] as number;
      await Bun.sleep(1000);
      figures.agentIdleMiB = status(agent, "VmRSS");
      tRounds = performance.now();
    }
    const put = (key: string, x: number | { ms: number }) => {
      if (r < 0) return;
      samples[key] ??= [];
      samples[key].push(typeof x === "number" ? x : x.ms);
    };
    const [v, h] = await alternate(
      r,
      () => timed([bin, "--version"], {}, ""),
      () => timed([hello], {}, ""),
    );
    put("versionMs", v);
    put("helloMs", h);
    put("versionRssMiB", v.maxRssKiB / 1024);
    put("helloRssMiB", h.maxRssKiB / 1024);

    // A plain pod through ratchet, and the delegate alone on a sandbox of its own.
    const plain = await n1.pod(`plain-${k}`);
    const ref = await n1.pod(`ref-${k}`);
    const [pa, ba] = await alternate(
      r,
      () => call(plain, "ADD", conf1),
      () => plugin(ref, "ADD", direct),
    );
    const [pd, bd] = await alternate(
      r,
      () => call(plain, "DEL", conf1),
      () => plugin(ref, "DEL", direct),
    );
    put("plainAddMs", pa);
    put("bridgeAddMs", ba);
    put("plainDelMs", pd);
    put("bridgeDelMs", bd);
    put("loopbackAddMs", await plugin(ref, "ADD", loopback, "lo"));

    // A pair on one node, and ptp + host-local on a sandbox of its own.
    const [a, b, p] = [await n1.pod(`a-${k}`), await n1.pod(`b-${k}`), await n1.pod(`ptp-${k}`)];
    if (r % 2 === 0) put("ptpAddMs", await plugin(p, "ADD", ptp));
    put("firstAddMs", await call(a, "ADD", conf1));
    put("secondAddMs", await call(b, "ADD", conf1));
    if (r % 2 !== 0) put("ptpAddMs", await plugin(p, "ADD", ptp));
    const [ld, td] = await alternate(
      r,
      () => call(b, "DEL", conf1),
      () => plugin(p, "DEL", ptp),
    );
    put("linkedDelMs", ld);
    put("ptpDelMs", td);
    put("otherDelMs", await call(a, "DEL", conf1));

    // A pair across the nodes: y-k's ADD builds node 2's VXLAN end; node 1's agent builds
    // x-k's from the etcd watch (waited for, untimed, so it does not spill into the next round).
    const [x, y] = [await n1.pod(`x-${k}`), await n2.pod(`y-${k}`)];
    put("crossFirstAddMs", await call(x, "ADD", conf1));
    put("crossAddMs", await call(y, "ADD", conf2));
    await waitFor("node 1's end of the VXLAN link", () => ifindexIn(x.netns.name, "net1"), 10_000, 10);
    put("crossDelMs", await call(y, "DEL", conf2));
    await call(x, "DEL", conf1);
    for (const pod of [plain, ref, a, b, p, x, y]) await pod.removeNetns();
  }
  for (const [k, xs] of Object.entries(samples)) {
    const [, base, unit] = /^(.*?)(Ms|MiB)$/.exec(k) as RegExpExecArray;
    figures[k] = median(xs);
    figures[`${base}P95${unit}`] = p95(xs);
  }
  figures.roundsSeconds = (performance.now() - tRounds) / 1000;

  // Node 1's agent after the rounds, then after LOAD pairs and LOAD plain pods, PARALLEL ADDs
  // at a time.
  await Bun.sleep(1000);
  figures.agentAfterRoundsMiB = status(agent, "VmRSS");
  const names: string[] = [];
  for (let i = 0; i < LOAD; i++) {
    c.putPod(on(n1, annotatedPod(`la-${i}`, linkTo(`lb-${i}`, i, 120))));
    c.putPod(on(n1, optInPod(`lb-${i}`)));
    c.putPod(on(n1, plainPod(`lp-${i}`)));
    names.push(`la-${i}`, `lb-${i}`, `lp-${i}`);
  }
  await Bun.sleep(500); // the pods reach the agent's watch, as they do before their sandboxes start
  const t1 = performance.now();
  let next = 0;
  let failed: unknown;
  const worker = async () => {
    // A failure stops every worker before the cleanup below runs.
    for (let i = next++; i < names.length && failed === undefined; i = next++)
      await call(await n1.pod(names[i] as string), "ADD", conf1).catch((err: unknown) => {
        failed ??= err;
      });
  };
  await Promise.all(Array.from({ length: PARALLEL }, worker));
  if (failed !== undefined) throw failed;
  figures.loadSeconds = (performance.now() - t1) / 1000;
  await Bun.sleep(1000);
  figures.agentLoadedMiB = status(agent, "VmRSS");
  figures.agentPeakMiB = status(agent, "VmHWM");
  figures.agentsAfterLoad = childPids(n1.logFile).length;
} finally {
  if (c) {
    // The agents first (the processes logging to the nodes' log files), then the pods'
    // netns 8 at a time (the cluster's own cleanup removes them one by one), then the rest:
    // host and switch netns, the etcd prefix, the API server, the cluster's temp dir.
    for (const n of c.nodes)
      for (const pid of childPids(n.logFile)) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // gone meanwhile
        }
      }
    const pods = c.pods.filter((p) => p.netnsExists);
    for (let i = 0; i < pods.length; i += 8)
      await Promise.all(pods.slice(i, i + 8).map((p) => p.removeNetns()));
    await c[Symbol.asyncDispose]();
  }
  await run(["ip", "link", "del", bridgeName]);
  removeInstalledBin();
  rmSync(dir, { recursive: true, force: true });
}

figures.seconds = (performance.now() - t0) / 1000;

const f = (k: string) => (typeof figures[k] === "number" ? (figures[k] as number) : Number.NaN);
const was = (k: string) => (typeof previous[k] === "number" ? (previous[k] as number) : Number.NaN);
const ms = (x: number) => (Number.isNaN(x) ? "-" : `${x.toFixed(1)} ms`);
const mib = (x: number) => (Number.isNaN(x) ? "-" : `${x.toFixed(1)} MiB`);
const signed = (x: number, unit: string) => `${x < 0 ? "-" : "+"}${Math.abs(x).toFixed(1)} ${unit}`;
const verdict = (ok: boolean) => (ok ? "met" : "not met");

type Row = {
  figure: string;
  ratchet: string;
  reference: string;
  "ratio / diff": string;
  target: string;
  previous: string;
};
let met = 0;
let targets = 0;
/** One timed row: ratchet's figure k against the reference's refK, held to a ratio or a difference. */
function row(
  figure: string,
  k: string,
  refK: string,
  refName: string,
  goal: { ratio: number } | { plus: number },
  unit: "ms" | "MiB" = "ms",
): Row {
  const key = (x: string, p95 = false) => `${x}${p95 ? "P95" : ""}${unit === "ms" ? "Ms" : "MiB"}`;
  const fmt = unit === "ms" ? ms : mib;
  const [x, ref] = [f(key(k)), f(key(refK))];
  const ok = "ratio" in goal ? x / ref <= goal.ratio : x - ref <= goal.plus;
  const target = "ratio" in goal ? `<= ${goal.ratio}x` : `<= +${goal.plus} ${unit}`;
  met += ok ? 1 : 0;
  targets += 1;
  figures[`${k}Target`] = `${target}: ${verdict(ok)}`;
  const show = (a: number, b: number) => ("ratio" in goal ? `${(a / b).toFixed(2)}x` : signed(a - b, unit));
  const [px, pref] = [was(key(k)), was(key(refK))];
  return {
    figure,
    ratchet: `${fmt(x)} (p95 ${fmt(f(key(k, true)))})`,
    reference: `${fmt(ref)} (p95 ${fmt(f(key(refK, true)))}) ${refName}`,
    "ratio / diff": show(x, ref),
    target: `${target}: ${verdict(ok)}`,
    previous: Number.isNaN(px) ? "-" : `${fmt(px)}, ${show(px, pref)}`,
  };
}

const rows: Row[] = [
  row("ratchet --version", "version", "hello", "Bun hello-world", { ratio: 1.2 }),
  row("ratchet --version peak RSS", "versionRss", "helloRss", "Bun hello-world", { plus: 4 }, "MiB"),
  row("plain pod ADD (delegate bridge)", "plainAdd", "bridgeAdd", "bridge alone", { plus: 10 }),
  row("plain pod DEL (delegate bridge)", "plainDel", "bridgeDel", "bridge alone", { plus: 10 }),
  row("second pod's ADD (builds the veth)", "secondAdd", "ptpAdd", "ptp + host-local", { ratio: 1.5 }),
  row("first pod's ADD (peer not there yet)", "firstAdd", "ptpAdd", "ptp + host-local", { ratio: 1.2 }),
  row("DEL of a linked pod (removes the veth)", "linkedDel", "ptpDel", "ptp DEL", { ratio: 1.5 }),
  row("cross-node ADD (builds the VXLAN end)", "crossAdd", "secondAdd", "same-node 2nd ADD", { ratio: 1.3 }),
];
const idleOk = f("agentIdleMiB") < 80;
const loadedOk = f("agentLoadedMiB") < 120;
met += (idleOk ? 1 : 0) + (loadedOk ? 1 : 0);
targets += 2;
const agentTarget = `< 80 / < 120 MiB: ${verdict(idleOk)} / ${verdict(loadedOk)}`;
figures.agentTarget = agentTarget;
rows.push({
  figure: `agent RSS idle / after ${LOAD} pairs + ${LOAD} plain pods`,
  ratchet: `${mib(f("agentIdleMiB"))} / ${mib(f("agentLoadedMiB"))}`,
  reference: `peak ${mib(f("agentPeakMiB"))}`,
  "ratio / diff": "",
  target: agentTarget,
  previous: Number.isNaN(was("agentIdleMiB"))
    ? "-"
    : `${mib(was("agentIdleMiB"))} / ${mib(was("agentLoadedMiB"))}`,
});
figures.targetsMet = met;
figures.targets = targets;

const human = [
  `floor: ${ROUNDS} rounds (after ${WARM} warm-up), ratchet and reference alternating run by run, ` +
    `medians (p95); ${cores} cores, load average ${figures.loadAverage} at the start`,
  table(rows),
  `boot network of the linked pods: loopback (${ms(f("loopbackAddMs"))} alone); ` +
    `the pair's other DEL (veth already gone) ${ms(f("otherDelMs"))}; ` +
    `cross-node: first ADD ${ms(f("crossFirstAddMs"))}, DEL ${ms(f("crossDelMs"))}`,
  `agent RSS after the rounds ${mib(f("agentAfterRoundsMiB"))}; then ${LOAD} pairs + ${LOAD} plain pods ` +
    `added ${PARALLEL} at a time in ${f("loadSeconds").toFixed(1)} s (${f("agentsAfterLoad")} agent on ` +
    `node 1); the rounds took ${f("roundsSeconds").toFixed(1)} s, ` +
    `the whole run ${f("seconds").toFixed(1)} s`,
  `targets met: ${met} of ${targets}; previous: ${
    previous.date ? `${previous.date}, ${previous.nproc} cores, load average ${previous.loadAverage}` : "none"
  } (bench/floor.json${process.env.RATCHET_BENCH_FLOOR_KEEP === "1" ? ", kept" : ""})`,
];
if (JSON_OUT) process.stderr.write(`${human.join("\n")}\n`);
report(figures, human);
if (process.env.RATCHET_BENCH_FLOOR_KEEP !== "1") {
  mkdirSync(dirname(KEPT), { recursive: true });
  writeFileSync(KEPT, `${JSON.stringify(figures, null, 2)}\n`);
}
