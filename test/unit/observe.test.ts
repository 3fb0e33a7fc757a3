// src/observe in pieces: the exposition (checked by the strict parser the integration tests
// use), the link-end states of a collection, the metrics' netlink decoder against the full
// one, the network-status merge, the listen address, and the CNI request accounting.
import { describe, expect, test } from "bun:test";
import { listenAddressProblem } from "../../src/cni/config.ts";
import { CniError } from "../../src/cni/errors.ts";
import { Logger } from "../../src/log.ts";
import { decodeCounters, type LinkCounters } from "../../src/netlink/counters.ts";
import { decodeLink } from "../../src/netlink/link.ts";
import {
  Attr,
  attrString,
  attrU8,
  attrU32,
  Bytes,
  IFF_UP,
  IFLA_CARRIER,
  IFLA_IFALIAS,
  IFLA_IFNAME,
  IFLA_MTU,
  IFLA_STATS64,
  IfInfoMsg,
  Message,
  parseMessages,
  RTM_NEWLINK,
} from "../../src/netlink/nl.ts";
import { parseListen } from "../../src/observe/http.ts";
import { inThreadReader } from "../../src/observe/counters-reader.ts";
import { collectLinkMetrics, type LinkEnd } from "../../src/observe/link-metrics.ts";
import {
  Counter,
  escapeLabelValue,
  Exposition,
  Gauge,
  Histogram,
  labelText,
} from "../../src/observe/metrics.ts";
import { mergeStatus, parseStatus } from "../../src/observe/network-status.ts";
import { linkSides } from "../../src/observe/bindings.ts";
import { Observer } from "../../src/observe/observer.ts";
import type { Request } from "../../src/rpc/protocol.ts";
import { find, parseExposition, value } from "../support/metrics.ts";

describe("exposition", () => {
  test("label values escape backslash, quote and newline; the parser reads them back", () => {
    expect(escapeLabelValue('a\\b"c\nd')).toBe('a\\\\b\\"c\\nd');
    const out = new Exposition().family("x_total", "counter", "help with \\ and\nnewline");
    out.sample("x_total", labelText(["v"], ['a\\b"c\nd']), 3);
    const s = parseExposition(out.text());
    expect(s.samples).toEqual([{ name: "x_total", labels: { v: 'a\\b"c\nd' }, value: 3 }]);
    expect(s.help.get("x_total")).toBe("help with \\\\ and\\nnewline");
  });

  test("counters, gauges and histograms (cumulative buckets, +Inf, sum, count)", () => {
    const c = new Counter("req_total", "Requests.", ["command", "result"]);
    c.inc(["ADD", "ok"]);
    c.inc(["ADD", "ok"]);
    c.inc(["DEL", "11"]);
    const g = new Gauge("temp", "A gauge.", []);
    g.set([], 1.5);
    const h = new Histogram("lat_seconds", "Latency.", ["command"], [0.01, 0.1, 1]);
    for (const v of [0.005, 0.05, 0.05, 5]) h.observe(["ADD"], v);
    const out = new Exposition();
    for (const f of [c, g, h]) f.write(out);
    const s = parseExposition(out.text());
    expect(value(s, "req_total", { command: "ADD", result: "ok" })).toBe(2);
    expect(value(s, "req_total", { command: "DEL", result: "11" })).toBe(1);
    expect(value(s, "temp")).toBe(1.5);
    expect(find(s, "lat_seconds_bucket").map((x) => [x.labels.le, x.value])).toEqual([
      ["0.01", 1],
      ["0.1", 3],
      ["1", 3],
      ["+Inf", 4],
    ]);
    expect(value(s, "lat_seconds_sum")).toBeCloseTo(5.105);
    expect(value(s, "lat_seconds_count")).toBe(4);
    expect(s.types.get("lat_seconds")).toBe("histogram");
    expect(() => c.inc(["ADD"])).toThrow("takes 2 label values");
  });

  test("the parser refuses what Prometheus refuses (the tests' scrapes are format checks)", () => {
    expect(() => parseExposition("x 1\n")).toThrow("before its # TYPE");
    expect(() => parseExposition("# TYPE x gauge\nx{a=1} 1\n")).toThrow("not quoted");
    expect(() => parseExposition("# TYPE x gauge\nx 1\n# TYPE y gauge\ny 1\nx 2\n")).toThrow(
      "outside its family",
    );
    expect(() => parseExposition("# TYPE x gauge\nx 1")).toThrow("newline");
  });

  test("an agent's whole exposition parses before anything is bound", async () => {
    const obs = new Observer(new Logger("test", "error"), { networkStatus: false });
    const s = parseExposition((await obs.metrics()).join(""));
    expect(value(s, "ratchet_link_ends", { state: "up" })).toBe(0);
    expect(s.types.get("ratchet_cni_request_duration_seconds")).toBe("histogram");
    expect(value(s, "process_resident_memory_bytes") ?? 0).toBeGreaterThan(0);
    expect(await obs.notReady()).toEqual(["the node agent is still starting"]);
  });
});

const counters = (over: Partial<LinkCounters>): LinkCounters => ({
  name: "",
  alias: "",
  up: true,
  carrier: true,
  rxPackets: 1,
  txPackets: 2,
  rxBytes: 100,
  txBytes: 200,
  rxDropped: 0,
  txDropped: 0,
  ...over,
});

describe("link ends by state", () => {
  const link = (i: number) => `lab/a/e${i}:lab/b/f${i}`;
  const endOf = (i: number, netns = "/n/a"): LinkEnd => ({
    pod: "lab/a",
    netns,
    ifname: `e${i}`,
    link: link(i),
    peer: "lab/b",
    mark: `mark${i}`,
  });
  test("up, down (admin or carrier), waiting, broken; foreign names and lost netns count as absent", async () => {
    const ends = [0, 1, 2, 3, 4, 5, 6].map((i) => endOf(i)).concat([endOf(7, "/n/gone")]);
    const kernel: Record<string, LinkCounters[]> = {
      "/n/a": [
        counters({ name: "lo" }),
        counters({ name: "e0", alias: "mark0", rxBytes: 1234 }),
        counters({ name: "e1", alias: "mark1", up: false, carrier: false }),
        counters({ name: "e2", alias: "mark2", carrier: false }),
        counters({ name: "e3", alias: "someone else's" }),
      ],
    };
    const recorded: Record<string, "built" | "broken" | "waiting"> = {
      [`lab/a|${link(4)}`]: "built",
      [`lab/a|${link(5)}`]: "broken",
      [`lab/a|${link(6)}`]: "waiting",
    };
    const reads: string[] = [];
    const got = await collectLinkMetrics(ends, {
      reader: inThreadReader((ns) => {
        reads.push(ns);
        const rows = kernel[ns];
        if (!rows) throw new Error(`netns ${ns} not found`);
        return rows;
      }),
      recorded: (pod, l) => recorded[`${pod}|${l}`],
    });
    expect(reads).toEqual(["/n/a", "/n/gone"]); // one dump per netns
    // e3 (foreign), e6 and e7 (netns gone) wait; e4 was built and is gone, e5 failed: broken.
    expect(got.byState).toEqual({ up: 1, down: 2, waiting: 3, broken: 2 });
    const s = parseExposition(got.chunks.join(""));
    const labels = { namespace: "lab", pod: "a", peer_namespace: "lab", peer_pod: "b" };
    expect(value(s, "ratchet_link_receive_bytes_total", { ...labels, interface: "e0" })).toBe(1234);
    expect(value(s, "ratchet_link_up", { interface: "e0" })).toBe(1);
    expect(value(s, "ratchet_link_up", { interface: "e1" })).toBe(0);
    expect(value(s, "ratchet_link_up", { interface: "e2" })).toBe(0);
    expect(value(s, "ratchet_link_up", { interface: "e3" })).toBeUndefined();
    expect(value(s, "ratchet_link_ends", { state: "broken" })).toBe(2);
  });

  test("linkSides finds the pod's interface and the other end", () => {
    expect(linkSides("lab/a/e1:lab/b/f1", "lab/b")).toEqual({
      ifname: "f1",
      peer: "lab/a",
      peerIfname: "e1",
    });
    expect(linkSides("lab/a/e1:x/b/f1", "lab/a")).toEqual({ ifname: "e1", peer: "x/b", peerIfname: "f1" });
  });
});

describe("decodeCounters", () => {
  test("reads what decodeLink reads, from the same RTM_NEWLINK", () => {
    const stats = new Uint8Array(200);
    const v = new DataView(stats.buffer);
    [11, 22, 3333, 4444, 0, 0, 5, 6].forEach((x, i) => {
      v.setBigUint64(i * 8, BigInt(x), true);
    });
    const msg = new Message(RTM_NEWLINK, 0, new IfInfoMsg(0, 7, IFF_UP, 0), [
      attrString(IFLA_IFNAME, "in1"),
      attrU32(IFLA_MTU, 1500),
      attrString(IFLA_IFALIAS, "ratchet:v1:abc"),
      attrU8(IFLA_CARRIER, 1),
      new Attr(IFLA_STATS64, new Bytes(stats)),
    ]);
    const [m] = parseMessages(msg.encode());
    if (!m) throw new Error("no message");
    const c = decodeCounters(m.payload);
    const full = decodeLink(m);
    expect(c).toEqual({
      name: full.name,
      alias: full.alias,
      up: full.up,
      carrier: full.carrier,
      rxPackets: full.stats?.rxPackets as number,
      txPackets: full.stats?.txPackets as number,
      rxBytes: full.stats?.rxBytes as number,
      txBytes: full.stats?.txBytes as number,
      rxDropped: full.stats?.rxDropped as number,
      txDropped: full.stats?.txDropped as number,
    });
    expect(c).toMatchObject({ name: "in1", rxBytes: 3333, txDropped: 6, carrier: true, up: true });
    const bad = m.payload.slice();
    new DataView(bad.buffer).setUint16(16, 999, true); // the first attribute's length
    expect(() => decodeCounters(bad)).toThrow("bad rta_len");
  });
});

describe("network-status", () => {
  const other = { name: "other/net9", interface: "net9", ips: ["10.9.9.9"] };
  const mine = { name: "ratchet/b", interface: "in1", ips: ["10.0.0.1"], mac: "02:00:00:00:00:01" };
  const boot = { name: "cbr0", interface: "eth0", ips: ["10.244.0.5"], default: true };
  test("keeps others' entries, replaces ratchet's, drops links gone, puts the boot entry first", () => {
    const stale = { name: "ratchet/gone", interface: "in9", ips: [] };
    const oldMine = { ...mine, ips: ["10.0.0.99"] };
    expect(mergeStatus([other, oldMine, stale], [mine], boot)).toEqual([boot, other, mine]);
    expect(mergeStatus([{ ...boot, ips: ["1.1.1.1"] }, other], [mine], boot)).toEqual([boot, other, mine]);
    // Without a boot entry, what is there stays; an entry on our interface is ours.
    expect(mergeStatus([boot, { name: "x", interface: "in1" }], [mine], undefined)).toEqual([boot, mine]);
    expect(mergeStatus([], [], undefined)).toEqual([]);
  });
  test("an unreadable annotation counts as no entries", () => {
    expect(parseStatus(undefined)).toEqual([]);
    expect(parseStatus("{oops")).toEqual([]);
    expect(parseStatus('{"a":1}')).toEqual([]);
    expect(parseStatus('[1, {"interface":"x"}]')).toEqual([{ interface: "x" }]);
  });
});

describe("metrics_address", () => {
  test("host:port forms, and the problem named otherwise", () => {
    for (const ok of ["127.0.0.1:9464", "0.0.0.0:0", ":9464", "[::1]:9464", "node-1.local:80"])
      expect(listenAddressProblem(ok)).toBeUndefined();
    expect(listenAddressProblem("9464")).toContain("host:port");
    expect(listenAddressProblem("1.2.3.4:70000")).toBe("port must be 0..65535");
    expect(parseListen(":9464")).toEqual({ hostname: "0.0.0.0", port: 9464 });
    expect(parseListen("[::1]:0")).toEqual({ hostname: "::1", port: 0 });
  });
});

describe("CNI requests as the agent sees them", () => {
  const req = (method: Request["method"], command: string, id = "c1"): Request =>
    ({
      id: 1,
      method,
      deadline: Date.now() + 1000,
      params: { env: { command, containerId: id, netns: "", ifname: "eth0", path: [] }, conf: {} },
    }) as unknown as Request;
  test("an eligible classify and its attach are one ADD; a failure counts under its code", async () => {
    const obs = new Observer(new Logger("test", "error"), { networkStatus: false });
    const handle = obs.track(async (r: Request) => {
      const env = "env" in r.params ? r.params.env : undefined;
      if (r.method === "classify") return { eligible: env?.containerId !== "plain" };
      if (r.method === "attach") throw new CniError(11, "etcd unreachable");
      return { owned: true };
    });
    const signal = new AbortController().signal;
    await handle(req("classify", "ADD"), signal);
    await expect(handle(req("attach", "ADD"), signal)).rejects.toThrow("etcd unreachable");
    await handle(req("classify", "ADD", "plain"), signal);
    await handle(req("detach", "DEL"), signal);
    const hello = { id: 2, method: "hello", deadline: Date.now() + 1000, params: {} } as Request;
    await handle(hello, signal);
    expect(obs.cniRequests.get(["ADD", "11"])).toBe(1);
    expect(obs.cniRequests.get(["ADD", "ok"])).toBe(1);
    expect(obs.cniRequests.get(["DEL", "ok"])).toBe(1);
    expect(obs.cniDuration.count(["ADD"])).toBe(2);
  });
});
