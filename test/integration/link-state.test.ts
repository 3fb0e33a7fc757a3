// What getLink / listLinks report beyond names: admin state and carrier, the alias (ratchet's
// ownership mark, set at creation or later), and the IFLA_STATS64 counters; checked against
// iproute2 on the host kernel, as root, in namespaces each test makes.
import { describe, expect, test } from "bun:test";
import {
  addAddress,
  addVethPair,
  addVxlan,
  getLink,
  listLinks,
  NetlinkError,
  setLink,
} from "../../src/netlink/index.ts";
import { waitFor } from "../support/child.ts";
import { run } from "../support/env.ts";
import { ipIn, linkInfo, makeNetns } from "../support/netns.ts";

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error("expected an error, none was thrown");
}

describe("alias", () => {
  test("set on both veth ends at creation, changed and cleared with setLink", async () => {
    await using a = await makeNetns("la");
    await using b = await makeNetns("lb");
    addVethPair({
      a: { name: "eth1", ns: a.path, alias: "ratchet/v1 default/pod-a eth1" },
      b: { name: "eth2", ns: b.path, alias: "ratchet/v1 default/pod-b eth2" },
    });
    expect(getLink("eth1", a.path).alias).toBe("ratchet/v1 default/pod-a eth1");
    expect(getLink("eth2", b.path)).toMatchObject({ alias: "ratchet/v1 default/pod-b eth2", up: true });
    expect((await linkInfo(a.name, "eth1"))?.ifalias).toBe("ratchet/v1 default/pod-a eth1");

    setLink("eth1", { alias: "ratchet/v1 other" }, a.path);
    expect(getLink("eth1", a.path).alias).toBe("ratchet/v1 other");
    setLink("eth1", { alias: "" }, a.path);
    expect(getLink("eth1", a.path).alias).toBe("");
    expect((await linkInfo(a.name, "eth1"))?.ifalias).toBeUndefined();

    const long = thrown(() => setLink("eth1", { alias: "x".repeat(256) }, a.path));
    expect(long).toBeInstanceOf(NetlinkError);
    expect((long as Error).message).toMatch(/invalid alias "x+": is 256 bytes, at most 255/);
    setLink("eth1", { alias: "é".repeat(127) }, a.path); // 254 bytes of UTF-8
    expect(getLink("eth1", a.path).alias).toBe("é".repeat(127));
  });

  test("a bad alias fails before anything is created", async () => {
    await using a = await makeNetns("la");
    await using b = await makeNetns("lb");
    const err = thrown(() =>
      addVethPair({ a: { name: "eth1", ns: a.path }, b: { name: "eth1", ns: b.path, alias: "a\0b" } }),
    );
    expect((err as Error).message).toContain("contains NUL");
    expect(listLinks(a.path).map((l) => l.name)).toEqual(["lo"]);
  });

  test("set on a vxlan at creation", async () => {
    await using h = await makeNetns("lh");
    await using p = await makeNetns("lp");
    await ipIn(h.name, ["link", "add", "u1", "type", "veth", "peer", "name", "u2"]);
    await ipIn(h.name, ["addr", "add", "10.204.0.1/30", "dev", "u1"]);
    await ipIn(h.name, ["link", "set", "u1", "up"]);
    addVxlan({
      name: "vx0",
      ns: p.path,
      hostNs: h.path,
      vni: 77,
      remote: "10.204.0.2",
      underlay: "u1",
      alias: "mark",
    });
    expect(getLink("vx0", p.path)).toMatchObject({ kind: "vxlan", vni: 77, alias: "mark" });
  });
});

describe("state and counters", () => {
  test("up and carrier: a veth end loses its carrier when the peer goes down", async () => {
    await using a = await makeNetns("la");
    await using b = await makeNetns("lb");
    addVethPair({ a: { name: "eth1", ns: a.path }, b: { name: "eth1", ns: b.path } });
    expect(getLink("eth1", a.path)).toMatchObject({ up: true, carrier: true });
    setLink("eth1", { up: false }, b.path);
    expect(getLink("eth1", b.path)).toMatchObject({ up: false, carrier: false });
    expect(getLink("eth1", a.path)).toMatchObject({ up: true, carrier: false });
    const flags = (await linkInfo(a.name, "eth1"))?.flags as string[];
    expect(flags).toContain("NO-CARRIER");
    // operstate follows through the kernel's link watch, a moment later.
    await waitFor("operstate down", () => getLink("eth1", a.path).operstate === "down");
    setLink("eth1", { up: true }, b.path);
    expect(getLink("eth1", a.path)).toMatchObject({ up: true, carrier: true });
    await waitFor("operstate up", () => getLink("eth1", a.path).operstate === "up");
  });

  test("IFLA_STATS64 counters agree with iproute2 and count a ping; listLinks has them all", async () => {
    await using a = await makeNetns("la");
    await using b = await makeNetns("lb");
    // No IPv6: its router and neighbour solicitations would add packets at random moments.
    for (const ns of [a, b])
      await run(["ip", "netns", "exec", ns.name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    addVethPair({ a: { name: "eth1", ns: a.path }, b: { name: "eth1", ns: b.path } });
    addAddress("eth1", "10.205.0.1/30", a.path);
    addAddress("eth1", "10.205.0.2/30", b.path);
    const zero = getLink("eth1", a.path).stats;
    expect(zero).toEqual({
      rxPackets: 0,
      txPackets: 0,
      rxBytes: 0,
      txBytes: 0,
      rxErrors: 0,
      txErrors: 0,
      rxDropped: 0,
      txDropped: 0,
    });
    const ping = await run([
      "ip",
      "netns",
      "exec",
      a.name,
      "ping",
      "-c",
      "3",
      "-i",
      "0.2",
      "-s",
      "1000",
      "10.205.0.2",
    ]);
    expect(ping.code).toBe(0);
    const s = getLink("eth1", a.path).stats;
    const shown = JSON.parse(await ipIn(a.name, ["-j", "-s", "link", "show", "dev", "eth1"]))[0].stats64;
    // 3 echo requests (1042-byte frames) plus ARP; nothing else runs in these namespaces.
    expect(s?.txPackets).toBeGreaterThanOrEqual(4);
    expect(s?.txBytes).toBeGreaterThanOrEqual(3 * 1042);
    expect(s?.rxPackets).toBeGreaterThanOrEqual(4);
    expect(s).toMatchObject({
      txPackets: shown.tx.packets,
      txBytes: shown.tx.bytes,
      rxPackets: shown.rx.packets,
      rxBytes: shown.rx.bytes,
      rxDropped: shown.rx.dropped,
      txDropped: shown.tx.dropped,
    });
    const all = listLinks(a.path);
    expect(all.map((l) => l.name)).toEqual(["lo", "eth1"]);
    for (const l of all) expect(l.stats).toBeDefined();
    expect(all[1]?.stats?.txPackets).toBe(s?.txPackets as number);
  });
});
