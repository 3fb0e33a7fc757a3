// Root qdiscs through src/netlink on the host's kernel, as root, checked against what
// iproute2's tc reports. Every test makes its own pair of namespaces joined by a veth.
// The host kernel may lack sch_netem: netem is then refused with QdiscKindUnsupported (as tc
// is refused); scripts/kernel-vm.sh proves netem itself on a kernel that has it.
import { describe, expect, test } from "bun:test";
import {
  LinkNotFoundError,
  NetlinkError,
  QdiscKindUnsupported,
  addAddress,
  addVethPair,
  deleteRootQdisc,
  getRootQdisc,
  listLinks,
  listRootQdiscs,
  setRootQdisc,
  tbfSizes,
} from "../../src/netlink/index.ts";
import { toCniError } from "../../src/cni/errors.ts";
import { run } from "../support/env.ts";
import { ipIn, makeNetns, type TestNetns } from "../support/netns.ts";

interface TcQdisc {
  kind: string;
  handle: string;
  root?: boolean;
  parent?: string;
  options?: { rate?: number; burst?: number; delay?: number };
}

/** `tc -j qdisc show dev IFNAME` in a namespace. */
async function tcShow(ns: TestNetns, ifname: string): Promise<TcQdisc[]> {
  return JSON.parse(
    await ipIn(undefined, ["netns", "exec", ns.name, "tc", "-j", "qdisc", "show", "dev", ifname]),
  );
}

/** "8001:" as tc prints a handle. */
const tcHandle = (handle: number) => `${(handle >>> 16).toString(16)}:`;

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error("expected an error, none was thrown");
}

/** Two fresh namespaces joined by a veth "eth1" <-> "eth1", both ends up. */
async function pair(): Promise<{ a: TestNetns; b: TestNetns; [Symbol.asyncDispose](): Promise<void> }> {
  const a = await makeNetns("qa");
  const b = await makeNetns("qb");
  addVethPair({ a: { name: "eth1", ns: a.path }, b: { name: "eth1", ns: b.path } });
  return {
    a,
    b,
    async [Symbol.asyncDispose]() {
      await a[Symbol.asyncDispose]();
      await b[Symbol.asyncDispose]();
    },
  };
}

describe("tbf", () => {
  test("set on both ends of a veth, read back, changed in place, removed", async () => {
    await using p = await pair();
    const { a, b } = p;
    const defaultRoot = getRootQdisc("eth1", a.path);
    expect(defaultRoot).toMatchObject({ kind: "noqueue", handle: 0, impairment: undefined });

    for (const ns of [a, b]) setRootQdisc("eth1", { kind: "tbf", rateKbit: 1000 }, ns.path);
    const before = new Map<TestNetns, number>();
    for (const ns of [a, b]) {
      const q = getRootQdisc("eth1", ns.path);
      expect(q).toMatchObject({ kind: "tbf", impairment: { kind: "tbf", rateKbit: 1000 } });
      expect(q?.handle).not.toBe(0);
      const shown = await tcShow(ns, "eth1");
      expect(shown).toHaveLength(1);
      expect(shown[0]).toMatchObject({ kind: "tbf", root: true, handle: tcHandle(q?.handle as number) });
      // tc prints the rate in bytes/s and the burst the kernel derived from ours.
      expect(shown[0]?.options?.rate).toBe(125_000);
      expect(shown[0]?.options?.burst).toBe(tbfSizes(1000, 1500).burst);
      before.set(ns, q?.handle as number);
    }

    // 1000 -> 2000 kbit: the same qdisc (handle) on the same link, changed in place.
    const ifindex = listLinks(a.path).find((l) => l.name === "eth1")?.index as number;
    setRootQdisc("eth1", { kind: "tbf", rateKbit: 2000 }, a.path);
    const changed = getRootQdisc("eth1", a.path);
    expect(changed).toMatchObject({
      ifindex,
      handle: before.get(a),
      impairment: { kind: "tbf", rateKbit: 2000 },
    });
    const shown = await tcShow(a, "eth1");
    expect(shown.filter((q) => q.root)).toHaveLength(1);
    expect(shown[0]).toMatchObject({ kind: "tbf", handle: tcHandle(before.get(a) as number) });
    expect(shown[0]?.options?.rate).toBe(250_000);
    // The other end kept its own.
    expect(getRootQdisc("eth1", b.path)?.impairment).toEqual({ kind: "tbf", rateKbit: 1000 });
    expect(listRootQdiscs(a.path).map((q) => [q.ifindex, q.kind])).toEqual([
      [1, "noqueue"],
      [ifindex, "tbf"],
    ]);

    // Removed: back to the kernel's default; removing again is a no-op.
    expect(deleteRootQdisc("eth1", a.path)).toBe(true);
    expect(getRootQdisc("eth1", a.path)).toMatchObject({ kind: "noqueue", handle: 0 });
    expect((await tcShow(a, "eth1")).map((q) => q.kind)).toEqual(["noqueue"]);
    expect(deleteRootQdisc("eth1", a.path)).toBe(false);
    expect(getRootQdisc("eth1", b.path)?.kind).toBe("tbf");
  });

  test("rates above 4 Gbit/s (64-bit) read back as set", async () => {
    await using p = await pair();
    for (const rateKbit of [8, 40_000_000, 100_000_000]) {
      setRootQdisc("eth1", { kind: "tbf", rateKbit }, p.a.path);
      expect(getRootQdisc("eth1", p.a.path)?.impairment).toEqual({ kind: "tbf", rateKbit });
      expect((await tcShow(p.a, "eth1"))[0]?.options?.rate).toBe(rateKbit * 125);
    }
  });

  test("traffic still flows through a tbf", async () => {
    await using p = await pair();
    addAddress("eth1", "10.203.0.1/30", p.a.path);
    addAddress("eth1", "10.203.0.2/30", p.b.path);
    setRootQdisc("eth1", { kind: "tbf", rateKbit: 10_000 }, p.a.path);
    const ping = await run([
      "ip",
      "netns",
      "exec",
      p.a.name,
      "ping",
      "-c",
      "3",
      "-i",
      "0.2",
      "-W",
      "2",
      "10.203.0.2",
    ]);
    expect(ping.code).toBe(0);
  });
});

describe("netem", () => {
  test("a kernel without sch_netem: QdiscKindUnsupported, as tc is refused; nothing changes", async () => {
    await using p = await pair();
    const { a } = p;
    setRootQdisc("eth1", { kind: "tbf", rateKbit: 1000 }, a.path);
    const before = listRootQdiscs(a.path);
    const linksBefore = listLinks(a.path).map((l) => l.name);
    let err: unknown;
    try {
      setRootQdisc("eth1", { kind: "netem", delayMs: 10, lossPercent: 1 }, a.path);
    } catch (e) {
      err = e;
    }
    const tc = await run([
      "tc",
      "-n",
      a.name,
      "qdisc",
      "replace",
      "dev",
      "eth1",
      "root",
      "netem",
      "delay",
      "10ms",
    ]);
    if (tc.code === 0) {
      // This kernel has netem: ours worked as tc's did.
      expect(err).toBeUndefined();
      return;
    }
    expect(tc.stderr).toContain("Specified qdisc kind is unknown");
    expect(err).toBeInstanceOf(QdiscKindUnsupported);
    const e = err as QdiscKindUnsupported;
    expect(e).toBeInstanceOf(NetlinkError);
    expect(e.kind).toBe("netem");
    expect(e.module).toBe("sch_netem");
    expect(e.code).toBe("ENOENT");
    expect(e.message).toStartWith(
      `failed to set netem on "eth1" in netns "${a.path}": this kernel has no netem`,
    );
    expect(e.message).toContain("`modprobe sch_netem`");
    expect(e.message).toContain("Specified qdisc kind is unknown");
    expect(toCniError(e).toJSON("1.1.0")).toMatchObject({ code: 101, msg: e.message });
    // Nothing left behind, nothing changed: the tbf is still the root, the links as they were.
    expect(listRootQdiscs(a.path)).toEqual(before);
    expect(listLinks(a.path).map((l) => l.name)).toEqual(linksBefore);
    expect((await tcShow(a, "eth1")).map((q) => q.kind)).toEqual(["tbf"]);
  });
});

describe("errors", () => {
  test("a missing link is LinkNotFoundError; a bad value names the field", async () => {
    await using p = await pair();
    const missing = thrown(() => setRootQdisc("nope0", { kind: "tbf", rateKbit: 1000 }, p.a.path));
    expect(missing).toBeInstanceOf(LinkNotFoundError);
    expect((missing as Error).message).toStartWith(`failed to set tbf on "nope0" in netns "${p.a.path}"`);
    expect(thrown(() => getRootQdisc("nope0", p.a.path))).toBeInstanceOf(LinkNotFoundError);
    expect(thrown(() => deleteRootQdisc(999, p.a.path))).toBeInstanceOf(LinkNotFoundError);
    const bad = thrown(() => setRootQdisc("eth1", { kind: "netem", delayMs: 60_001 }, p.a.path));
    expect(bad).toBeInstanceOf(NetlinkError);
    expect((bad as NetlinkError).code).toBe("EINVAL");
    expect((bad as Error).message).toBe(
      `failed to set netem on "eth1" in netns "${p.a.path}": ` +
        "netem delayMs 60001: must be a number 0..60000 ms",
    );
    expect((await tcShow(p.a, "eth1")).map((q) => q.kind)).toEqual(["noqueue"]);
  });
});
