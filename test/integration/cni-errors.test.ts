// Every validation rule: the exact CNI error JSON on stdout, exit 1, and nothing created.
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { tempDir } from "../support/env.ts";
import { cni, type Invocation } from "../support/cni.ts";
import { linkInfo, makeNetns } from "../support/netns.ts";

const scratch = tempDir("ratchet-errors-");
afterAll(() => scratch[Symbol.dispose]());

const good = {
  cniVersion: "1.0.0",
  name: "net",
  type: "ratchet",
  etcd_host: "127.0.0.1",
  log_file: join(scratch.path, "ratchet.log"),
  child_socket: join(scratch.path, "child.sock"),
  delegate: {
    type: "ptp",
    ipam: { type: "host-local", subnet: "10.205.0.0/24", dataDir: join(scratch.path, "ipam") },
  },
};
const ids = { containerId: "abc", netns: "/var/run/netns/none", ifname: "eth0" };

interface Case {
  name: string;
  inv: Partial<Invocation>;
  want: { cniVersion: string; code: number; msg: string; details?: string };
}

const cases: Case[] = [
  {
    name: "CNI_COMMAND missing",
    inv: { command: undefined },
    want: {
      cniVersion: "1.0.0",
      code: 4,
      msg: "CNI_COMMAND is not set",
      details: "expected one of ADD, DEL, CHECK, STATUS, GC, VERSION",
    },
  },
  {
    name: "CNI_COMMAND unknown",
    inv: { command: "UPDATE" },
    want: {
      cniVersion: "1.0.0",
      code: 4,
      msg: 'CNI_COMMAND "UPDATE" is not a CNI command',
      details: "expected one of ADD, DEL, CHECK, STATUS, GC, VERSION",
    },
  },
  {
    name: "ADD reports every missing variable at once",
    inv: { command: "ADD", containerId: undefined, netns: undefined, ifname: undefined, path: "" },
    want: {
      cniVersion: "1.0.0",
      code: 4,
      msg: "ADD needs CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH: not set",
      details: "missing: CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH",
    },
  },
  {
    name: "CHECK needs CNI_NETNS",
    inv: { command: "CHECK", netns: undefined },
    want: {
      cniVersion: "1.0.0",
      code: 4,
      msg: "CHECK needs CNI_NETNS: not set",
      details: "missing: CNI_NETNS",
    },
  },
  {
    name: "DEL needs CNI_CONTAINERID and CNI_IFNAME",
    inv: { command: "DEL", containerId: undefined, ifname: undefined },
    want: {
      cniVersion: "1.0.0",
      code: 4,
      msg: "DEL needs CNI_CONTAINERID, CNI_IFNAME: not set",
      details: "missing: CNI_CONTAINERID, CNI_IFNAME",
    },
  },
  {
    name: "GC needs CNI_PATH",
    inv: { command: "GC", path: "", conf: { ...good, cniVersion: "1.1.0" } },
    want: { cniVersion: "1.1.0", code: 4, msg: "GC needs CNI_PATH: not set", details: "missing: CNI_PATH" },
  },
  {
    name: "container id with a slash",
    inv: { command: "ADD", containerId: "../etc" },
    want: {
      cniVersion: "1.0.0",
      code: 4,
      msg: 'CNI_CONTAINERID "../etc" must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$',
    },
  },
  {
    name: "container id with a newline",
    inv: { command: "ADD", containerId: "abc\ndef" },
    want: {
      cniVersion: "1.0.0",
      code: 4,
      msg: 'CNI_CONTAINERID "abc\\ndef" must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$',
    },
  },
  {
    name: "ifname too long",
    inv: { command: "ADD", ifname: "abcdefghijklmnop" },
    want: {
      cniVersion: "1.0.0",
      code: 4,
      msg: 'CNI_IFNAME "abcdefghijklmnop" is 16 bytes long, the limit is 15',
    },
  },
  {
    name: "ifname ..",
    inv: { command: "ADD", ifname: ".." },
    want: { cniVersion: "1.0.0", code: 4, msg: "CNI_IFNAME \"..\" may not be '.' or '..'" },
  },
  {
    name: "ifname with a colon",
    inv: { command: "ADD", ifname: "eth0:1" },
    want: {
      cniVersion: "1.0.0",
      code: 4,
      msg: "CNI_IFNAME \"eth0:1\" may not contain '/', ':', NUL or whitespace",
    },
  },
  {
    name: "ifname with a space",
    inv: { command: "ADD", ifname: "eth 0" },
    want: {
      cniVersion: "1.0.0",
      code: 4,
      msg: "CNI_IFNAME \"eth 0\" may not contain '/', ':', NUL or whitespace",
    },
  },
  {
    name: "CNI_ARGS malformed pair",
    inv: { command: "ADD", args: "IgnoreUnknown=1;oops" },
    want: { cniVersion: "1.0.0", code: 4, msg: 'CNI_ARGS: malformed pair "oops": expected KEY=VALUE' },
  },
  {
    name: "pod name with a slash",
    inv: { command: "ADD", args: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=a/b" },
    want: {
      cniVersion: "1.0.0",
      code: 4,
      msg:
        'CNI_ARGS: K8S_POD_NAME "a/b" is not a DNS-1123 ' +
        "subdomain (lower-case letters, digits, '-' and '.')",
    },
  },
  {
    name: "pod namespace without name",
    inv: { command: "ADD", args: "K8S_POD_NAMESPACE=default" },
    want: { cniVersion: "1.0.0", code: 4, msg: "CNI_ARGS: K8S_POD_NAMESPACE and K8S_POD_NAME go together" },
  },
  {
    name: "stdin not JSON",
    inv: { command: "ADD", conf: "{not json" },
    want: {
      cniVersion: "1.1.0",
      code: 6,
      msg: "network configuration on stdin is not valid JSON: JSON Parse error: Expected '}'",
    },
  },
  {
    name: "stdin over 1 MiB",
    inv: { command: "ADD", conf: JSON.stringify({ ...good, pad: "x".repeat(1 << 20) }) },
    want: {
      cniVersion: "1.1.0",
      code: 6,
      msg:
        `network configuration on stdin is ` +
        `${JSON.stringify({ ...good, pad: "x".repeat(1 << 20) }).length} bytes; the limit is 1048576`,
    },
  },
  {
    name: "unsupported cniVersion",
    inv: { command: "ADD", conf: { ...good, cniVersion: "0.2.0" } },
    want: {
      cniVersion: "0.2.0",
      code: 1,
      msg: 'cniVersion "0.2.0" is not supported',
      details: "supported versions: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0",
    },
  },
  {
    name: "CHECK below 0.4.0",
    inv: { command: "CHECK", conf: { ...good, cniVersion: "0.3.1" } },
    want: {
      cniVersion: "0.3.1",
      code: 1,
      msg: 'CHECK needs cniVersion 0.4.0 or later; the config says "0.3.1"',
    },
  },
  {
    name: "STATUS below 1.1.0",
    inv: { command: "STATUS" },
    want: {
      cniVersion: "1.0.0",
      code: 1,
      msg: 'STATUS needs cniVersion 1.1.0 or later; the config says "1.0.0"',
    },
  },
  {
    name: "GC below 1.1.0",
    inv: { command: "GC", conf: { ...good, cniVersion: "0.4.0" } },
    want: {
      cniVersion: "0.4.0",
      code: 1,
      msg: 'GC needs cniVersion 1.1.0 or later; the config says "0.4.0"',
    },
  },
  {
    name: "etcd_port of the wrong type",
    inv: { command: "ADD", conf: { ...good, etcd_port: true } },
    want: {
      cniVersion: "1.0.0",
      code: 7,
      msg:
        "invalid network configuration: field etcd_port: " +
        "must be a port number (string or number) (got true)",
      details: "field etcd_port: must be a port number (string or number) (got true)",
    },
  },
  {
    name: "etcd_host and etcd_endpoints both missing",
    inv: { command: "ADD", conf: { ...good, etcd_host: undefined } },
    want: {
      cniVersion: "1.0.0",
      code: 7,
      msg:
        "invalid network configuration: field etcd_host: " +
        "etcd_host or etcd_endpoints is required (missing)",
      details: "field etcd_host: etcd_host or etcd_endpoints is required (missing)",
    },
  },
  {
    name: "child_path relative",
    inv: { command: "ADD", conf: { ...good, child_path: "bin/ratchet-child" } },
    want: {
      cniVersion: "1.0.0",
      code: 7,
      msg:
        "invalid network configuration: field child_path: child_path " +
        'must be an absolute path (got "bin/ratchet-child")',
      details: 'field child_path: child_path must be an absolute path (got "bin/ratchet-child")',
    },
  },
  {
    name: "delegate type with a slash",
    inv: { command: "ADD", conf: { ...good, delegate: { type: "../../bin/sh" } } },
    want: {
      cniVersion: "1.0.0",
      code: 7,
      msg:
        "invalid network configuration: field delegate.type: type must " +
        "be a plain plugin name, without '/' (got \"../../bin/sh\")",
      details: "field delegate.type: type must be a plain plugin name, without '/' (got \"../../bin/sh\")",
    },
  },
  {
    name: "log_level unknown",
    inv: { command: "ADD", conf: { ...good, log_level: "verbose" } },
    want: {
      cniVersion: "1.0.0",
      code: 7,
      msg:
        "invalid network configuration: field log_level: log_level " +
        'must be one of error, warn, info, debug (got "verbose")',
      details: 'field log_level: log_level must be one of error, warn, info, debug (got "verbose")',
    },
  },
  {
    name: "parent_interface too long",
    inv: { command: "ADD", conf: { ...good, parent_interface: "a-very-long-interface" } },
    want: {
      cniVersion: "1.0.0",
      code: 7,
      msg:
        "invalid network configuration: field parent_interface: interface name " +
        '"a-very-long-interface" is 21 bytes long, the limit is 15 (got "a-very-long-interface")',
      details:
        'field parent_interface: interface name "a-very-long-interface" ' +
        'is 21 bytes long, the limit is 15 (got "a-very-long-interface")',
    },
  },
  {
    name: "unknown delegate type",
    inv: { command: "ADD", conf: { ...good, delegate: { type: "no-such-plugin" } } },
    want: {
      cniVersion: "1.0.0",
      code: 100,
      msg: 'failed to find plugin "no-such-plugin" in CNI_PATH',
      details: "searched: /usr/lib/cni",
    },
  },
  {
    name: "chained without prevResult",
    inv: { command: "ADD", conf: { ...good, delegate: undefined } },
    want: {
      cniVersion: "1.0.0",
      code: 7,
      msg: "invalid network configuration: field delegate: missing, and no prevResult either",
      details: "ratchet needs a delegate, or to be chained after a plugin that produces a result",
    },
  },
];

describe("input validation", () => {
  test.each(cases.map((c) => [c.name, c] as const))("%s", async (_name, c) => {
    await using ns = await makeNetns();
    const inv: Invocation = {
      command: "ADD",
      conf: good,
      path: "/usr/lib/cni",
      ...ids,
      netns: ns.path,
      ...c.inv,
    } as Invocation;
    if ("netns" in c.inv && c.inv.netns === undefined) delete inv.netns;
    const r = await cni(inv);
    const want = { ...c.want };
    expect(r.code).toBe(1);
    expect(r.stdout.endsWith("\n")).toBe(true);
    expect(r.json).toEqual(want);
    expect(r.stdout).not.toContain("    at ");
    // Nothing was created in the pod's namespace.
    expect(await linkInfo(ns.name, "eth0")).toBeUndefined();
  });

  test("unknown config fields are kept and never rejected", async () => {
    await using ns = await makeNetns();
    const r = await cni({
      command: "ADD",
      conf: { ...good, delegate: { type: "loopback" }, some_future_field: { a: 1 } },
      ...ids,
      netns: ns.path,
      ifname: "lo",
    });
    expect(r.code).toBe(0);
  });

  test("VERSION answers in the config's version, or 1.1.0 without one", async () => {
    const a = await cni({ command: "VERSION", conf: { cniVersion: "0.4.0" } });
    expect(a.json).toEqual({
      cniVersion: "0.4.0",
      supportedVersions: ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    });
    const b = await cni({ command: "VERSION", conf: "" });
    expect(b.json).toEqual({
      cniVersion: "1.1.0",
      supportedVersions: ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    });
    expect(b.code).toBe(0);
  });
});
