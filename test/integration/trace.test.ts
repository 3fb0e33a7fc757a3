// RATCHET_TRACE=1: each step of a CNI call and its time on stderr; the result on stdout is
// the same as without it.
import { expect, test } from "bun:test";
import { annotatedPod, makeCluster, optInPod } from "../support/cluster.ts";

test("RATCHET_TRACE=1 prints the steps of an ADD (agent calls and the agent's etcd, netlink and pod lookup, plugins, total) on stderr", async () => {
  await using c = await makeCluster({ nodes: 1 });
  const n = c.node(1);
  c.putPod(optInPod("b"));
  c.putPod(
    annotatedPod("a", [
      { peer: "b", local_ifname: "t0", peer_ifname: "t1", local_ip: "10.92.0.1/30", peer_ip: "10.92.0.2/30" },
    ]),
  );
  const b = await n.pod("b");
  const a = await n.pod("a");
  expect((await b.add()).code).toBe(0);
  const r = await c.cni({
    command: "ADD",
    conf: n.conf(),
    containerId: a.containerId,
    netns: a.netns.path,
    ifname: a.ifname,
    args: a.args,
    env: { RATCHET_TRACE: "1" },
  });
  expect(r.code).toBe(0);
  expect(JSON.parse(r.stdout).interfaces.map((i: { name: string }) => i.name)).toContain("t0");
  const lines = r.stderr.trim().split("\n");
  for (const step of [
    /^ratchet trace: parent started at [\d.]+ ms since process start$/,
    /^ratchet trace: agent classify took [\d.]+ ms$/,
    /^ratchet trace: plugin loopback ADD took [\d.]+ ms$/,
    /^ratchet trace: agent attach took [\d.]+ ms$/,
    // The agent's side: its time by kind of work, sent back with the answer.
    /^ratchet trace: agent attach: etcd took [\d.]+ ms \(\d+ times?\)$/,
    /^ratchet trace: agent attach: netlink took [\d.]+ ms \(\d+ times?\)$/,
    /^ratchet trace: agent classify: pod lookup took [\d.]+ ms \(1 time\)$/,
    /^ratchet trace: ADD took [\d.]+ ms in all$/,
  ])
    expect(lines.some((l) => step.test(l))).toBe(true);
  // Without it: nothing on stderr.
  const quiet = await b.cni("CHECK", { prevResult: { cniVersion: "1.0.0", interfaces: [], ips: [] } });
  expect(quiet.stderr).toBe("");
  await c.stopAllAndAssertClean();
});
