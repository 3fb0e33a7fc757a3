// The netlink layer against the real kernel, as root. Every test makes its own namespaces
// (removed on dispose, which removes their links too) and looks at the outcome with iproute2.
import { describe, expect, test } from "bun:test";
import { readdirSync, readlinkSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  addAddress,
  addVethPair,
  addVxlan,
  deleteLink,
  firstIpv4Address,
  getLink,
  LinkNotFoundError,
  listAddresses,
  listLinks,
  moveLink,
  NetlinkError,
  NetnsNotFoundError,
  renameLink,
  setLinkUp,
  setMac,
  setMtu,
  withNetns,
} from "../../src/netlink/index.ts";
import { toCniError } from "../../src/cni/errors.ts";
import { ErrnoError } from "../../src/netlink/errors.ts";
import { AF_UNSPEC, IfInfoMsg, Message, RTM_GETLINK, RTM_NEWLINK } from "../../src/netlink/nl.ts";
import { NetlinkSocket } from "../../src/netlink/socket.ts";
import { BUN, run, tempDir, uniqueName } from "../support/env.ts";
import { addresses, ipIn, linkInfo, makeNetns, type TestNetns } from "../support/netns.ts";

interface IpLink {
  ifindex: number;
  ifname: string;
  mtu: number;
  operstate: string;
  flags: string[];
  address: string;
  link_index?: number;
  linkinfo?: { info_kind?: string; info_data?: Record<string, unknown> };
}

async function ipLink(ns: TestNetns | undefined, ifname: string): Promise<IpLink> {
  const info = await linkInfo(ns?.name, ifname);
  if (!info) throw new Error(`ip link show dev ${ifname} found nothing in ${ns?.name ?? "the host"}`);
  return info as unknown as IpLink;
}

async function ping(ns: TestNetns, addr: string): Promise<{ code: number; out: string }> {
  const r = await run(["ip", "netns", "exec", ns.name, "ping", "-c1", "-W1", addr]);
  return { code: r.code, out: r.stdout + r.stderr };
}

/** A link in the host netns that is deleted on dispose, whatever the test did. */
function hostLink(tag: string): { name: string; [Symbol.asyncDispose](): Promise<void> } {
  const name = uniqueName(tag);
  return {
    name,
    async [Symbol.asyncDispose]() {
      await run(["ip", "link", "del", name]);
    },
  };
}

/**
 * The fds of this process that are sockets or namespace files: what the netlink layer opens.
 * (Pipes and socket pairs of the `ip` processes the tests run close on their own schedule.)
 */
function openFds(): string[] {
  const out: string[] = [];
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      if (target.startsWith("socket:") || target.startsWith("net:")) out.push(`${fd} ${target}`);
    } catch {
      // closed while listing (the fd of readdir itself)
    }
  }
  return out.sort();
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error("expected an error, none was thrown");
}

describe("veth", () => {
  test("a pair lands in two namespaces under its final names, both up, with MTU and MAC", async () => {
    await using a = await makeNetns("a");
    await using b = await makeNetns("b");
    addVethPair({
      a: { name: "eth1", ns: a.path, mtu: 1400, mac: "02:aa:00:00:00:01" },
      b: { name: "peer9", ns: b.path, mac: "02:bb:00:00:00:02" },
    });
    const ia = await ipLink(a, "eth1");
    const ib = await ipLink(b, "peer9");
    expect(ia.linkinfo?.info_kind).toBe("veth");
    expect(ib.linkinfo?.info_kind).toBe("veth");
    expect(ia.mtu).toBe(1400);
    expect(ib.mtu).toBe(1500);
    expect(ia.address).toBe("02:aa:00:00:00:01");
    expect(ib.address).toBe("02:bb:00:00:00:02");
    expect(ia.flags).toContain("UP");
    expect(ib.flags).toContain("UP");
    expect(ia.operstate).toBe("UP");
    expect(ib.operstate).toBe("UP");

    const la = getLink("eth1", a.path);
    expect(la).toMatchObject({
      index: ia.ifindex,
      name: "eth1",
      kind: "veth",
      mtu: 1400,
      mac: "02:aa:00:00:00:01",
      up: true,
      operstate: "up",
    });
    if (la.kind !== "veth") throw new Error("not a veth");
    expect(la.peerIndex).toBe(ib.ifindex);
    expect(getLink(ib.ifindex, b.path)).toMatchObject({ name: "peer9", kind: "veth" });
    expect(listLinks(a.path).map((l) => [l.name, l.kind])).toEqual([
      ["lo", "other"],
      ["eth1", "veth"],
    ]);
  });

  test("IPv4 and IPv6 addresses, even with IPv6 disabled on the link; ping over the pair", async () => {
    await using a = await makeNetns("a");
    await using b = await makeNetns("b");
    addVethPair({ a: { name: "eth1", ns: a.path }, b: { name: "eth1", ns: b.path } });
    expect(firstIpv4Address("eth1", a.path)).toBeUndefined();
    await run(["ip", "netns", "exec", b.name, "sysctl", "-qw", "net.ipv6.conf.eth1.disable_ipv6=1"]);
    addAddress("eth1", "10.201.0.1/24", a.path);
    addAddress("eth1", "fd42::1/64", a.path);
    addAddress("eth1", "10.201.0.2/24", b.path);
    addAddress("eth1", "fd42::2/64", b.path);
    expect(await addresses(a.name, "eth1")).toEqual(["10.201.0.1/24", "fd42::1/64"]);
    expect(await addresses(b.name, "eth1")).toEqual(["10.201.0.2/24", "fd42::2/64"]);
    // NODAD: usable at once, never "tentative".
    const addrJson = JSON.parse(await ipIn(b.name, ["-j", "addr", "show", "dev", "eth1"])) as Array<{
      addr_info: Array<Record<string, unknown>>;
    }>;
    const v6 = addrJson[0]?.addr_info.find((x) => x.local === "fd42::2");
    expect(v6).toBeDefined();
    expect(v6?.tentative).toBeUndefined();

    const listed = listAddresses("eth1", b.path).filter((x) => x.scope === "global");
    expect(listed).toEqual([
      { family: 4, address: "10.201.0.2", prefixLength: 24, scope: "global" },
      { family: 6, address: "fd42::2", prefixLength: 64, scope: "global" },
    ]);
    expect(firstIpv4Address("eth1", b.path)).toBe("10.201.0.2");
    expect(firstIpv4Address("lo", b.path)).toBe("127.0.0.1");
    expect((await ping(a, "10.201.0.2")).code).toBe(0);
    expect((await ping(b, "fd42::1")).code).toBe(0);
  });

  test("ends in the current netns when no netns is given", async () => {
    await using a = await makeNetns("a");
    await using host = hostLink("h");
    addVethPair({ a: { name: host.name }, b: { name: "eth0", ns: a.path } });
    const ih = await ipLink(undefined, host.name);
    expect(ih.linkinfo?.info_kind).toBe("veth");
    expect(ih.flags).toContain("UP");
    expect(getLink(host.name).name).toBe(host.name);
    expect(listLinks().some((l) => l.name === host.name)).toBe(true);
    deleteLink(host.name);
    expect(await linkInfo(undefined, host.name)).toBeUndefined();
    expect(await linkInfo(a.name, "eth0")).toBeUndefined();
  });

  test("an existing name on either end fails with EEXIST naming that end and its netns", async () => {
    await using a = await makeNetns("a");
    await using b = await makeNetns("b");
    addVethPair({ a: { name: "in1", ns: a.path }, b: { name: "out1", ns: b.path } });
    const e1 = thrown(() => addVethPair({ a: { name: "in1", ns: a.path }, b: { name: "out2", ns: b.path } }));
    expect(e1).toBeInstanceOf(NetlinkError);
    expect((e1 as NetlinkError).code).toBe("EEXIST");
    expect((e1 as NetlinkError).cniCode).toBe(101);
    expect((e1 as Error).message).toStartWith(`failed to add veth "in1" in netns "${a.path}"`);
    expect((e1 as Error).message).toContain("File exists (EEXIST)");
    // The entry point's one mapping turns it into CNI error 101 with the same text.
    expect(toCniError(e1).toJSON("1.1.0")).toMatchObject({ code: 101, msg: (e1 as Error).message });
    const e2 = thrown(() => addVethPair({ a: { name: "in2", ns: a.path }, b: { name: "out1", ns: b.path } }));
    expect((e2 as Error).message).toStartWith(`failed to add veth "out1" in netns "${b.path}"`);
    expect((e2 as Error).message).toContain("(EEXIST)");
    // Nothing half-made is left behind.
    expect(listLinks(a.path).map((l) => l.name)).toEqual(["lo", "in1"]);
    expect(listLinks(b.path).map((l) => l.name)).toEqual(["lo", "out1"]);
  });
});

describe("link changes", () => {
  test("up/down, MTU, MAC, rename, move, delete", async () => {
    await using a = await makeNetns("a");
    await using b = await makeNetns("b");
    await using c = await makeNetns("c");
    addVethPair({ a: { name: "x0", ns: a.path }, b: { name: "y0", ns: b.path } });

    setLinkUp("x0", false, a.path);
    expect((await ipLink(a, "x0")).flags).not.toContain("UP");
    expect(getLink("x0", a.path).up).toBe(false);
    setLinkUp("x0", true, a.path);
    expect((await ipLink(a, "x0")).flags).toContain("UP");

    setMtu("x0", 1234, a.path);
    expect((await ipLink(a, "x0")).mtu).toBe(1234);
    setMac("x0", "02:12:34:56:78:9a", a.path);
    expect((await ipLink(a, "x0")).address).toBe("02:12:34:56:78:9a");

    setLinkUp("x0", false, a.path);
    renameLink("x0", "renamed0", a.path);
    expect(await linkInfo(a.name, "x0")).toBeUndefined();
    expect((await ipLink(a, "renamed0")).mtu).toBe(1234);

    moveLink("renamed0", a.path, c.path);
    expect(await linkInfo(a.name, "renamed0")).toBeUndefined();
    expect((await ipLink(c, "renamed0")).address).toBe("02:12:34:56:78:9a");

    deleteLink("renamed0", c.path);
    expect(await linkInfo(c.name, "renamed0")).toBeUndefined();
    expect(await linkInfo(b.name, "y0")).toBeUndefined(); // the peer goes with it
  });

  test("moving into the current netns", async () => {
    await using a = await makeNetns("a");
    await using b = await makeNetns("b");
    await using host = hostLink("m");
    addVethPair({ a: { name: host.name, ns: a.path }, b: { name: "eth0", ns: b.path } });
    moveLink(host.name, a.path, undefined);
    expect(await ipLink(undefined, host.name)).toMatchObject({ ifname: host.name });
    expect(await linkInfo(a.name, host.name)).toBeUndefined();
  });
});

describe("vxlan", () => {
  // Two "hosts" joined by a veth underlay, each with a pod netns holding its vxlan end.
  async function twoHosts(family: 4 | 6) {
    const made: TestNetns[] = [];
    const cleanup = async () => {
      for (const ns of made.reverse()) await ns[Symbol.asyncDispose]();
    };
    try {
      for (const tag of ["h", "h", "p", "p"]) made.push(await makeNetns(tag));
      const [h1, h2, p1, p2] = made as [TestNetns, TestNetns, TestNetns, TestNetns];
      await ipIn(undefined, [
        "link",
        "add",
        "u1",
        "netns",
        h1.name,
        "type",
        "veth",
        "peer",
        "name",
        "u2",
        "netns",
        h2.name,
      ]);
      const [v1, v2, len] = family === 4 ? ["192.168.77.1", "192.168.77.2", 24] : ["fd77::1", "fd77::2", 64];
      addAddress("u1", `${v1}/${len}`, h1.path);
      addAddress("u2", `${v2}/${len}`, h2.path);
      await ipIn(h1.name, ["link", "set", "u1", "up"]);
      await ipIn(h2.name, ["link", "set", "u2", "up"]);
      return { h1, h2, p1, p2, v1, v2, [Symbol.asyncDispose]: cleanup };
    } catch (err) {
      await cleanup();
      throw err;
    }
  }

  test("IPv4 remote: in the pod netns, final name, up, VNI, remote, port, MTU; ping across", async () => {
    await using t = await twoHosts(4);
    addVxlan({
      name: "vx0",
      ns: t.p1.path,
      hostNs: t.h1.path,
      vni: 4242,
      remote: t.v2,
      underlay: "u1",
      mac: "02:00:00:42:00:01",
    });
    addVxlan({ name: "vx0", ns: t.p2.path, hostNs: t.h2.path, vni: 4242, remote: t.v1, underlay: "u2" });
    const l = await ipLink(t.p1, "vx0");
    expect(l.linkinfo?.info_kind).toBe("vxlan");
    expect(l.linkinfo?.info_data).toMatchObject({ id: 4242, remote: t.v2, port: 4789, learning: true });
    expect(l.mtu).toBe(1450);
    expect(l.address).toBe("02:00:00:42:00:01");
    expect(l.flags).toContain("UP");
    expect(await linkInfo(t.h1.name, "vx0")).toBeUndefined();

    const g = getLink("vx0", t.p1.path);
    expect(g).toMatchObject({
      kind: "vxlan",
      vni: 4242,
      remote: t.v2,
      port: 4789,
      learning: true,
      mtu: 1450,
      up: true,
    });
    const u1 = await ipLink(t.h1, "u1");
    if (g.kind !== "vxlan") throw new Error("not a vxlan");
    expect(g.underlayIndex).toBe(u1.ifindex);

    addAddress("vx0", "10.77.0.1/24", t.p1.path);
    addAddress("vx0", "10.77.0.2/24", t.p2.path);
    const r = await ping(t.p1, "10.77.0.2");
    expect(r.out).toContain("1 received");
    expect(r.code).toBe(0);
  });

  test("IPv6 remote: MTU is the underlay's minus 70; custom port; ping across", async () => {
    await using t = await twoHosts(6);
    await ipIn(t.h1.name, ["link", "set", "u1", "mtu", "9000"]);
    await ipIn(t.h2.name, ["link", "set", "u2", "mtu", "9000"]);
    addVxlan({
      name: "tun7",
      ns: t.p1.path,
      hostNs: t.h1.path,
      vni: 7,
      remote: t.v2,
      underlay: "u1",
      port: 8472,
    });
    addVxlan({
      name: "tun7",
      ns: t.p2.path,
      hostNs: t.h2.path,
      vni: 7,
      remote: t.v1,
      underlay: "u2",
      port: 8472,
      learning: false,
    });
    const l = await ipLink(t.p1, "tun7");
    expect(l.mtu).toBe(8930);
    expect(l.linkinfo?.info_data).toMatchObject({ id: 7, remote6: t.v2, port: 8472, learning: true });
    expect((await ipLink(t.p2, "tun7")).linkinfo?.info_data).toMatchObject({ learning: false });
    expect(getLink("tun7", t.p2.path)).toMatchObject({
      kind: "vxlan",
      remote: t.v1,
      learning: false,
      port: 8472,
    });
    addAddress("tun7", "10.78.0.1/24", t.p1.path);
    addAddress("tun7", "10.78.0.2/24", t.p2.path);
    expect((await ping(t.p2, "10.78.0.1")).code).toBe(0);
  });

  test("an existing name in the pod netns, a taken VNI, a missing underlay", async () => {
    await using t = await twoHosts(4);
    addVxlan({ name: "vx0", ns: t.p1.path, hostNs: t.h1.path, vni: 10, remote: t.v2, underlay: "u1" });
    const dup = thrown(() =>
      addVxlan({ name: "vx0", ns: t.p1.path, hostNs: t.h1.path, vni: 11, remote: t.v2, underlay: "u1" }),
    );
    expect(dup).toBeInstanceOf(NetlinkError);
    expect((dup as Error).message).toStartWith(`failed to add vxlan "vx0" in netns "${t.p1.path}"`);
    expect((dup as Error).message).toContain("File exists (EEXIST)");
    const vni = thrown(() =>
      addVxlan({ name: "vx1", ns: t.p2.path, hostNs: t.h1.path, vni: 10, remote: t.v2, underlay: "u1" }),
    );
    expect((vni as NetlinkError).code).toBe("EEXIST");
    expect((vni as Error).message).toContain("VNI"); // the kernel's extended ack
    const missing = thrown(() =>
      addVxlan({ name: "vx2", ns: t.p2.path, hostNs: t.h1.path, vni: 12, remote: t.v2, underlay: "nosuch0" }),
    );
    expect(missing).toBeInstanceOf(LinkNotFoundError);
    expect((missing as Error).message).toContain('underlay "nosuch0" not found');
    expect(listLinks(t.p2.path).map((l) => l.name)).toEqual(["lo"]);
  });
});

describe("errors", () => {
  test("missing links give LinkNotFoundError (ENODEV) naming the link and netns", async () => {
    await using a = await makeNetns("a");
    for (const fn of [
      () => getLink("ghost0", a.path),
      () => getLink(4242, a.path),
      () => deleteLink("ghost0", a.path),
      () => setLinkUp("ghost0", true, a.path),
      () => setMtu("ghost0", 1400, a.path),
      () => setMac("ghost0", "02:00:00:00:00:01", a.path),
      () => renameLink("ghost0", "ghost1", a.path),
      () => moveLink("ghost0", a.path, undefined),
      () => addAddress("ghost0", "10.0.0.1/24", a.path),
      () => listAddresses("ghost0", a.path),
    ]) {
      const err = thrown(fn);
      expect(err).toBeInstanceOf(LinkNotFoundError);
      expect((err as LinkNotFoundError).code).toBe("ENODEV");
      expect((err as LinkNotFoundError).cniCode).toBe(101);
      expect((err as Error).message).toContain(`netns "${a.path}"`);
      expect((err as Error).message).toMatch(/"ghost0"|index 4242/);
    }
  });

  test("missing or non-netns paths give NetnsNotFoundError", async () => {
    using dir = tempDir();
    const regular = `${dir.path}/file`;
    await Bun.write(regular, "x");
    const gone = await makeNetns("g");
    const gonePath = gone.path;
    await gone[Symbol.asyncDispose]();
    for (const path of [
      "/var/run/netns/ratchet-no-such-ns",
      regular,
      dir.path,
      gonePath,
      "/proc/self/ns/mnt",
    ]) {
      for (const fn of [
        () => getLink("lo", path),
        () => listLinks(path),
        () => deleteLink("eth0", path),
        () => addVethPair({ a: { name: "a0", ns: path }, b: { name: "b0", ns: path } }),
        () => withNetns(path, () => 1),
      ]) {
        const err = thrown(fn);
        expect(err).toBeInstanceOf(NetnsNotFoundError);
        expect((err as Error).message).toContain(JSON.stringify(path));
      }
    }
  });

  test("adding an existing address fails with EEXIST", async () => {
    await using a = await makeNetns("a");
    await using b = await makeNetns("b");
    addVethPair({ a: { name: "eth0", ns: a.path }, b: { name: "eth0", ns: b.path } });
    addAddress("eth0", "10.9.9.1/24", a.path);
    const err = thrown(() => addAddress("eth0", "10.9.9.1/24", a.path));
    expect(err).toBeInstanceOf(NetlinkError);
    // The kernel's extended ack may follow ("ipv4: Address already assigned").
    expect((err as Error).message).toStartWith(
      `failed to add address 10.9.9.1/24 to "eth0" in netns "${a.path}": File exists (EEXIST)`,
    );
  });

  test("bad input is refused before the kernel sees it", () => {
    expect(() => addVethPair({ a: { name: "waytoolongname0123" }, b: { name: "b" } })).toThrow(
      "is 18 bytes long",
    );
    expect(() => addAddress("lo", "10.0.0.1", undefined)).toThrow("no prefix length");
    expect(() => setMac("lo", "zz:00:00:00:00:00")).toThrow("not a MAC address");
    expect(() => setMtu("lo", 10)).toThrow("invalid MTU");
  });
});

describe("namespaces and resources", () => {
  test("withNetns runs inside the netns and always comes back", async () => {
    await using a = await makeNetns("a");
    const here = readlinkSync("/proc/thread-self/ns/net");
    const inside = withNetns(a.path, () => readlinkSync("/proc/thread-self/ns/net"));
    expect(inside).toBe(`net:[${statSync(a.path).ino}]`);
    expect(inside).not.toBe(here);
    expect(readlinkSync("/proc/thread-self/ns/net")).toBe(here);
    expect(() =>
      withNetns(a.path, () => {
        throw new Error("boom");
      }),
    ).toThrow("boom");
    expect(readlinkSync("/proc/thread-self/ns/net")).toBe(here);
    expect(() => withNetns(a.path, () => Promise.resolve(1))).toThrow("must be synchronous");
    expect(readlinkSync("/proc/thread-self/ns/net")).toBe(here);
    expect(withNetns(undefined, () => readlinkSync("/proc/thread-self/ns/net"))).toBe(here);
    // Work done inside lands in that netns: /proc/sys/net belongs to the netns of its opener.
    withNetns(a.path, () => writeFileSync("/proc/sys/net/ipv4/ip_forward", "1"));
    expect(
      (await run(["ip", "netns", "exec", a.name, "sysctl", "-n", "net.ipv4.ip_forward"])).stdout.trim(),
    ).toBe("1");
  });

  test("if switching back fails, the process exits instead of running on in the wrong netns", async () => {
    await using a = await makeNetns("a");
    const r = await run([BUN, join(import.meta.dir, "netns-exit-fixture.ts"), a.path]);
    expect(r.stderr).toContain(`cannot return from netns "${a.path}"`);
    expect(r.stderr).toContain("(EBADF)");
    expect(r.stdout).toBe("");
    expect(r.code).toBe(70);
  });

  test("a /proc/<pid>/ns/net path works like a /var/run/netns one", async () => {
    await using a = await makeNetns("a");
    await using b = await makeNetns("b");
    const proc = Bun.spawn({
      cmd: ["ip", "netns", "exec", a.name, "sleep", "30"],
      stdout: "ignore",
      stderr: "ignore",
    });
    await using _kill = {
      async [Symbol.asyncDispose]() {
        proc.kill();
        await proc.exited;
      },
    };
    const want = `net:[${statSync(a.path).ino}]`;
    const nsPath = `/proc/${proc.pid}/ns/net`;
    // Wait for the exec to enter the netns (a condition, not a delay).
    for (let i = 0; i < 500 && readlinkSync(nsPath) !== want; i++) await Bun.sleep(10);
    expect(readlinkSync(nsPath)).toBe(want);
    addVethPair({ a: { name: "eth5", ns: nsPath }, b: { name: "eth6", ns: b.path } });
    expect((await ipLink(a, "eth5")).linkinfo?.info_kind).toBe("veth");
    expect(getLink("eth5", nsPath).name).toBe("eth5");
  });

  test("verbs leak no file descriptors, whether they succeed or fail", async () => {
    await using a = await makeNetns("a");
    await using b = await makeNetns("b");
    const before = openFds();
    for (let i = 0; i < 50; i++) {
      addVethPair({ a: { name: `v${i}`, ns: a.path }, b: { name: `w${i}`, ns: b.path } });
      addAddress(`v${i}`, `10.50.${i}.1/24`, a.path);
      getLink(`v${i}`, a.path);
      listAddresses(`v${i}`, a.path);
      thrown(() => addVethPair({ a: { name: `v${i}`, ns: a.path }, b: { name: "z", ns: b.path } }));
      thrown(() => getLink("nothere", b.path));
      thrown(() => getLink("lo", "/var/run/netns/ratchet-no-such-ns"));
      deleteLink(`v${i}`, a.path);
    }
    // Nothing new is open (fds of earlier `ip` runs may close meanwhile, so not equality).
    const after = openFds();
    expect(after.filter((fd) => !before.includes(fd))).toEqual([]);
    expect(after.filter((fd) => fd.includes(" net:"))).toEqual(before.filter((fd) => fd.includes(" net:")));
    expect(listLinks(a.path).map((l) => l.name)).toEqual(["lo"]);
  });
});

describe("dumps", () => {
  test("a dump the kernel marks interrupted (NLM_F_DUMP_INTR) is redone, never returned torn", async () => {
    await using ns = await makeNetns("d");
    using dir = tempDir();
    // Enough links that a dump spans several datagrams, so changes can land between them.
    const batch = Array.from({ length: 300 }, (_, i) => `link add s${i} type veth peer name t${i}`).join(
      "\n",
    );
    await Bun.write(`${dir.path}/mk.batch`, `${batch}\n`);
    await ipIn(ns.name, ["-batch", `${dir.path}/mk.batch`]);
    const stable = new Set(["lo", ...Array.from({ length: 300 }, (_, i) => [`s${i}`, `t${i}`]).flat()]);
    // Churn: a link pair appears and disappears over and over while we dump.
    const churn = Bun.spawn({
      cmd: [
        "bash",
        "-c",
        `while :; do ip -n ${ns.name} link add c0 type veth peer name c1; ip -n ${ns.name} link del c0; done`,
      ],
      stdout: "ignore",
      stderr: "ignore",
    });
    await using _stop = {
      async [Symbol.asyncDispose]() {
        churn.kill();
        await churn.exited;
      },
    };
    const before = NetlinkSocket.redoneDumps;
    const deadline = Date.now() + 20_000;
    let dumps = 0;
    while ((NetlinkSocket.redoneDumps === before || dumps < 50) && Date.now() < deadline) {
      const names = listLinks(ns.path).map((l) => l.name);
      dumps++;
      expect(new Set(names).size).toBe(names.length); // no link twice
      for (const name of stable) if (!names.includes(name)) throw new Error(`dump ${dumps} lacks ${name}`);
      for (const name of names) if (!stable.has(name)) expect(["c0", "c1"]).toContain(name);
    }
    expect(NetlinkSocket.redoneDumps).toBeGreaterThan(before);
  }, 60_000);
});

describe("request loop", () => {
  test("a message the kernel does not answer times out instead of hanging", () => {
    using sock = NetlinkSocket.open(300);
    // Without NLM_F_REQUEST and NLM_F_ACK the kernel drops the message silently.
    const silent = new Message(RTM_GETLINK, 0, new IfInfoMsg(), []);
    const t0 = Date.now();
    const err = thrown(() => sock.exchange(silent, false));
    const took = Date.now() - t0;
    expect(err).toBeInstanceOf(ErrnoError);
    expect((err as ErrnoError).code).toBe("ETIMEDOUT");
    expect((err as Error).message).toContain("RTM_GETLINK");
    expect(took).toBeGreaterThanOrEqual(250);
    expect(took).toBeLessThan(5000);
    // The socket still works afterwards.
    expect(sock.get(RTM_GETLINK, new IfInfoMsg(AF_UNSPEC, 1), []).type).toBe(RTM_NEWLINK);
  });
});
