// Pod start and stop through a real container runtime, side by side in one run (as root,
// etcd at $RATCHET_TEST_ETCD): RunPodSandbox and StopPodSandbox of Debian's containerd on
// two simulated nodes of the test bed, one loading conf/10-ratchet.conf (bridge delegate),
// the other the same bridge config alone. Interleaved each round:
//  - a plain pod through ratchet vs the bridge alone (goal: at most 1.15x);
//  - the second pod of a linked pair (its ADD builds the veth) vs the bridge alone (goal:
//    at most 1.5x).
//   node_modules/.bin/bun scripts/bench/cri.ts [ROUNDS]
import { annotatedPod, plainPod } from "../../test/support/cluster.ts";
import { CriBed, type CriNode } from "../../test/support/cri/bed.ts";
import { ARGS, median, report, table } from "./support.ts";

const ROUNDS = Number(ARGS[0] ?? 20);

function p95(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(0.95 * s.length) - 1)] as number;
}

async function timedMs(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

const samples = {
  bridgeRun: [] as number[],
  bridgeStop: [] as number[],
  plainRun: [] as number[],
  plainStop: [] as number[],
  linkedRun: [] as number[],
  linkedStop: [] as number[],
};

/** Runs a pod, times RunPodSandbox and StopPodSandbox, removes it. */
async function runStop(n: CriNode, name: string, before?: (id: string) => Promise<void>): Promise<number[]> {
  const cri = n.containerd.cri;
  const config = n.sandboxConfig(name);
  let id = "";
  const run = await timedMs(async () => {
    id = await cri.runPodSandbox(config);
  });
  if (before) await before(id);
  const stop = await timedMs(() => cri.stopPodSandbox(id));
  await cri.removePodSandbox(id);
  return [run, stop];
}

{
  await using bed = await CriBed.make({ nodes: 2, kind: ["standalone", "bridge"] });
  const [viaRatchet, alone] = [bed.node(1), bed.node(2)];
  // One warm-up round: the agent starts, caches fill, the bridge is made.
  for (let i = -1; i < ROUNDS; i++) {
    const r = String(i + 1);
    bed.cluster.putPod(plainPod(`plain-${r}`));
    bed.cluster.putPod(plainPod(`bridge-${r}`));
    bed.cluster.putPod(
      annotatedPod(`a-${r}`, [
        {
          peer: `b-${r}`,
          local_ifname: "net1",
          peer_ifname: "net1",
          local_ip: "10.99.0.1/30",
          peer_ip: "10.99.0.2/30",
        },
      ]),
    );
    const b = plainPod(`b-${r}`);
    b.metadata.labels = { ratchet: "true" }; // agrees to a-r's link, declares none
    bed.cluster.putPod(b);

    const [br, bs] = await runStop(alone, `bridge-${r}`);
    const [pr, ps] = await runStop(viaRatchet, `plain-${r}`);
    const a = await viaRatchet.run(`a-${r}`);
    const [lr, ls] = await runStop(viaRatchet, `b-${r}`, async (id) => {
      // Not timed: the link is really there before the stop is measured.
      const b = await viaRatchet.sandbox(id);
      if ((await b.iface("net1"))?.kind !== "veth") throw new Error(`b-${r}: no veth net1\n${bed.logs()}`);
    });
    await a.stop();
    await a.remove();
    if (i < 0) continue;
    samples.bridgeRun.push(br as number);
    samples.bridgeStop.push(bs as number);
    samples.plainRun.push(pr as number);
    samples.plainStop.push(ps as number);
    samples.linkedRun.push(lr as number);
    samples.linkedStop.push(ls as number);
  }
  await bed.assertClean();
}

const m = (k: keyof typeof samples) => median(samples[k]);
const row = (what: string, k: keyof typeof samples, ref: keyof typeof samples, goal: number) => ({
  call: what,
  "median ms": m(k),
  "p95 ms": p95(samples[k]),
  "bridge alone ms": m(ref),
  "bridge p95 ms": p95(samples[ref]),
  ratio: m(k) / m(ref),
  goal: `<= ${goal}x ${m(k) / m(ref) <= goal ? "met" : "NOT met"}`,
});
const rows = [
  row("plain pod RunPodSandbox", "plainRun", "bridgeRun", 1.15),
  row("plain pod StopPodSandbox", "plainStop", "bridgeStop", 1.15),
  row("linked pod RunPodSandbox", "linkedRun", "bridgeRun", 1.5),
  row("linked pod StopPodSandbox", "linkedStop", "bridgeStop", 1.5),
];
report(
  {
    rounds: ROUNDS,
    bridgeRunMs: m("bridgeRun"),
    bridgeStopMs: m("bridgeStop"),
    plainRunMs: m("plainRun"),
    plainStopMs: m("plainStop"),
    linkedRunMs: m("linkedRun"),
    linkedStopMs: m("linkedStop"),
    bridgeRunP95Ms: p95(samples.bridgeRun),
    plainRunP95Ms: p95(samples.plainRun),
    linkedRunP95Ms: p95(samples.linkedRun),
    bridgeStopP95Ms: p95(samples.bridgeStop),
    plainStopP95Ms: p95(samples.plainStop),
    linkedStopP95Ms: p95(samples.linkedStop),
  },
  [
    `containerd ${ROUNDS} rounds, interleaved in one run; reference: the same bridge config alone`,
    table(rows),
  ],
);
