// The builder asks for the ifindexes of the ends it creates, chosen from one read of each
// netns. Another program may create an interface there in between (a pod's boot network runs
// beside ratchet's links; a node's other CNI calls create host-side interfaces). These tests
// make that happen right after the read (the builder's afterRead) with iproute2: the build
// reads again and succeeds, touches nothing it did not build, and finds a wanted name taken
// meanwhile as someone else's.
import { describe, expect, test } from "bun:test";
import {
  type BuiltEnd,
  buildTunnelEnds,
  buildVeths,
  markOf,
  type TunnelJob,
  type VethJob,
} from "../../src/links/builder.ts";
import { addresses, ipIn, linkInfo, makeNetns } from "../support/netns.ts";

/** `ip -n netns ...`, synchronously (the builder's afterRead is synchronous); throws on failure. */
function ipSync(netns: string, args: string): void {
  const r = Bun.spawnSync(["ip", "-n", netns, ...args.split(" ")], { stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`ip -n ${netns} ${args}: ${r.stderr.toString()}`);
}

/** Takes ifindexes from..to in a netns with veth pairs named <tag>N. */
function takeIndexes(netns: string, tag: string, from: number, to: number): void {
  for (let i = from; i < to; i += 2)
    ipSync(netns, `link add ${tag}${i} index ${i} type veth peer name ${tag}${i + 1} index ${i + 1}`);
}

/** Runs fn once, on the first call only. */
function once(fn: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    fn();
  };
}

const names = async (ns: string) =>
  (JSON.parse(await ipIn(ns, ["-j", "link", "show"])) as Array<{ ifname: string }>)
    .map((l) => l.ifname)
    .sort();

function vethJob(a: string, b: string): VethJob {
  return {
    link: "default/a:net1--default/b:net1",
    mtu: undefined,
    mine: { namespace: "default", pod: "a", ifname: "net1", ips: ["10.9.0.1/30"] },
    me: { pod: "default/a", netns: a },
    theirs: { namespace: "default", pod: "b", ifname: "net1", ips: ["10.9.0.2/30"] },
    peer: { pod: "default/b", netns: b },
  };
}

describe("an interface created by another program between the builder's read and its create", () => {
  test("veth: the ifindexes it took are not asked for again; the pair is built; theirs stay", async () => {
    await using a = await makeNetns("ra");
    await using b = await makeNetns("rb");
    // The first read sees only lo (1): the pair would be asked for at 2 in each netns.
    const built = buildVeths(
      [vethJob(a.path, b.path)],
      once(() => {
        takeIndexes(a.name, "x", 2, 10);
        takeIndexes(b.name, "y", 2, 10);
      }),
    );
    expect(built).toEqual([{ name: "net1", mac: expect.any(String), sandbox: a.path }] as BuiltEnd[]);
    for (const [ns, tag] of [
      [a.name, "x"],
      [b.name, "y"],
    ] as const) {
      const l = await linkInfo(ns, "net1");
      expect(l?.ifalias).toBe(markOf("default/a:net1--default/b:net1"));
      expect(l?.ifindex as number).toBeGreaterThanOrEqual(10);
      expect(await names(ns)).toEqual(
        ["lo", "net1", ...[2, 3, 4, 5, 6, 7, 8, 9].map((i) => `${tag}${i}`)].sort(),
      );
    }
    expect(await addresses(a.name, "net1")).toEqual(["10.9.0.1/30"]);
    expect(await addresses(b.name, "net1")).toEqual(["10.9.0.2/30"]);
  });

  test("veth: a wanted name another program took meanwhile is found foreign and left alone", async () => {
    await using a = await makeNetns("ra");
    await using b = await makeNetns("rb");
    expect(() =>
      buildVeths(
        [vethJob(a.path, b.path)],
        once(() => {
          ipSync(a.name, "link add net1 type veth peer name other");
        }),
      ),
    ).toThrow(/interface "net1" .* already exists \(veth\) and was not built by ratchet/);
    expect(await names(a.name)).toEqual(["lo", "net1", "other"]);
    expect((await linkInfo(a.name, "net1"))?.ifalias).toBeUndefined();
    expect(await names(b.name)).toEqual(["lo"]);
  });

  test("VXLAN: the ifindex it took in the pod's netns is not asked for again; the end is built", async () => {
    await using host = await makeNetns("rh");
    await using pod = await makeNetns("rp");
    await ipIn(host.name, ["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
    await ipIn(host.name, ["addr", "add", "10.254.9.1/24", "dev", "ul0"]);
    await ipIn(host.name, ["link", "set", "ul0", "up"]);
    const link = "default/a:t1--default/b:t1";
    const job: TunnelJob = {
      link,
      end: { namespace: "default", pod: "a", ifname: "t1", ips: ["10.9.1.1/30"] },
      at: { pod: "default/a", netns: pod.path },
      tunnel: {
        vni: 4242,
        remote: "10.254.9.2",
        underlay: "ul0",
        hostNetns: host.path,
        mtu: undefined,
        state: undefined,
      },
      fresh: false,
    };
    // Both netns are read first: the end would be asked for just above the host's ifindexes.
    const [built] = buildTunnelEnds(
      [job],
      once(() => takeIndexes(pod.name, "z", 2, 20)),
    );
    expect(built).toEqual({ name: "t1", mac: expect.any(String), sandbox: pod.path });
    const l = await linkInfo(pod.name, "t1");
    expect(l?.ifalias).toBe(markOf(link));
    expect((l?.linkinfo as { info_data?: { id?: number } })?.info_data?.id).toBe(4242);
    expect(await addresses(pod.name, "t1")).toEqual(["10.9.1.1/30"]);
    expect((await names(pod.name)).filter((n) => n.startsWith("z"))).toHaveLength(18);
  });
});
