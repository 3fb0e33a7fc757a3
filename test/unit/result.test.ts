import { describe, expect, test } from "bun:test";
import { appendInterfaces, formatResult, parseResult } from "../../src/cni/result.ts";
import { CniError } from "../../src/cni/errors.ts";
import { SPEC_VERSIONS } from "../../src/cni/versions.ts";

const v100 = {
  cniVersion: "1.0.0",
  interfaces: [
    { name: "cni0", mac: "aa:bb:cc:dd:ee:01" },
    { name: "eth0", mac: "aa:bb:cc:dd:ee:02", sandbox: "/var/run/netns/p" },
  ],
  ips: [
    { interface: 1, address: "10.1.0.5/24", gateway: "10.1.0.1" },
    { interface: 1, address: "fd00::5/64" },
  ],
  routes: [{ dst: "0.0.0.0/0", gw: "10.1.0.1" }],
  dns: { nameservers: ["10.96.0.10"] },
};

describe("results across versions", () => {
  test("1.0.0 -> 0.3.1 adds ips[].version and keeps order and indices", () => {
    const out = formatResult(parseResult(v100, "t"), "0.3.1");
    expect(out).toEqual({
      cniVersion: "0.3.1",
      interfaces: v100.interfaces,
      ips: [
        { version: "4", interface: 1, address: "10.1.0.5/24", gateway: "10.1.0.1" },
        { version: "6", interface: 1, address: "fd00::5/64" },
      ],
      routes: v100.routes,
      dns: v100.dns,
    });
  });

  test("0.4.0 -> 1.0.0 drops ips[].version", () => {
    const old = formatResult(parseResult(v100, "t"), "0.4.0");
    const back = formatResult(parseResult(old, "t"), "1.0.0");
    expect(back).toEqual(v100);
  });

  test("1.1.0 keeps interface mtu/socketPath/pciID and route extras; 1.0.0 drops them", () => {
    const rich = {
      ...v100,
      cniVersion: "1.1.0",
      interfaces: [{ name: "eth0", mtu: 1400, socketPath: "/run/x.sock", pciID: "0000:00:01.0" }],
      ips: [{ interface: 0, address: "10.1.0.5/24" }],
      routes: [
        { dst: "10.0.0.0/8", gw: "10.1.0.1", mtu: 1300, priority: 5, table: 100, scope: 0, advmss: 1200 },
      ],
    };
    expect(formatResult(parseResult(rich, "t"), "1.1.0")).toEqual(rich);
    const down = formatResult(parseResult(rich, "t"), "1.0.0");
    expect(down.interfaces).toEqual([{ name: "eth0" }]);
    expect(down.routes).toEqual([{ dst: "10.0.0.0/8", gw: "10.1.0.1" }]);
  });

  test("0.2.0 results (ip4/ip6) are read", () => {
    const r = parseResult(
      {
        cniVersion: "0.2.0",
        ip4: { ip: "10.2.0.3/16", gateway: "10.2.0.1", routes: [{ dst: "0.0.0.0/0" }] },
      },
      "t",
    );
    expect(formatResult(r, "1.0.0")).toEqual({
      cniVersion: "1.0.0",
      ips: [{ address: "10.2.0.3/16", gateway: "10.2.0.1" }],
      routes: [{ dst: "0.0.0.0/0" }],
      dns: {},
    });
  });

  test("0.2.0 is written as ip4/ip6: the first address of each family, its routes beside it", () => {
    const r = parseResult(
      {
        ...v100,
        ips: [...v100.ips, { interface: 1, address: "10.1.0.6/24" }],
        routes: [...v100.routes, { dst: "fd01::/64", gw: "fd00::1" }],
      },
      "t",
    );
    const out = formatResult(r, "0.2.0");
    expect(out).toEqual({
      cniVersion: "0.2.0",
      ip4: { ip: "10.1.0.5/24", gateway: "10.1.0.1", routes: [{ dst: "0.0.0.0/0", gw: "10.1.0.1" }] },
      ip6: { ip: "fd00::5/64", routes: [{ dst: "fd01::/64", gw: "fd00::1" }] },
      dns: v100.dns,
    });
    expect(formatResult(parseResult(out, "t"), "0.2.0")).toEqual(out);
  });

  test.each(SPEC_VERSIONS.map((s) => s.version))("%s reads back what it writes", (version) => {
    const rich = {
      ...v100,
      cniVersion: "1.1.0",
      interfaces: [...v100.interfaces, { name: "net1", mtu: 9000, socketPath: "/run/y.sock" }],
      routes: [{ dst: "10.0.0.0/8", gw: "10.1.0.1", mtu: 1300, table: 100 }],
    };
    const once = formatResult(parseResult(rich, "t"), version);
    expect(once.cniVersion).toBe(version);
    expect(formatResult(parseResult(once, "t"), version)).toEqual(once);
  });

  test("an out-of-range interface index is refused", () => {
    expect(() =>
      parseResult(
        { cniVersion: "1.0.0", interfaces: [], ips: [{ interface: 0, address: "10.0.0.1/24" }] },
        "plugin x",
      ),
    ).toThrow(
      new CniError(
        6,
        "invalid CNI result from plugin x: ips entry 10.0.0.1/24 points at interface 0, which does not exist",
      ),
    );
    expect(() => parseResult("nope", "plugin x")).toThrow("not a JSON object");
  });

  test("appended interfaces get the next indices; existing ones are untouched", () => {
    const r = appendInterfaces(parseResult(v100, "t"), [
      {
        iface: { name: "in1", mac: "02:00:00:00:00:01", sandbox: "/var/run/netns/p" },
        ips: ["192.168.2.100/24"],
      },
    ]);
    const out = formatResult(r, "1.0.0") as {
      interfaces: unknown[];
      ips: Array<{ interface: number; address: string }>;
    };
    expect(out.interfaces).toHaveLength(3);
    expect(out.ips.at(-1)).toEqual({ interface: 2, address: "192.168.2.100/24" });
    expect(out.ips.slice(0, 2)).toEqual(v100.ips);
  });
});
