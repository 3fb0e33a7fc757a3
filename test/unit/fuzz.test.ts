// Seeded, bounded fuzzing of the two parsers that take outside input: the network config
// schema and the pod label/annotation parser. Whatever comes in, the answer is a parsed
// value or a CniError with the right code and a message naming what is wrong; never another
// exception, never a hang.
import { describe, expect, test } from "bun:test";
import { parseNetConf } from "../../src/cni/config.ts";
import { CniError } from "../../src/cni/errors.ts";
import { podLinks } from "../../src/pods/podspec.ts";
import { rng } from "../support/rng.ts";

const SEED = Number(process.env.RATCHET_FUZZ_SEED ?? 20261128);
const ROUNDS = 4000;
const BUDGET_MS = 8000;

const NASTY: unknown[] = [
  null,
  true,
  false,
  0,
  -1,
  1.5,
  65536,
  1e308,
  Number.MAX_SAFE_INTEGER,
  "",
  " ",
  "../x",
  "a/b",
  "x:y",
  "\u0000",
  "eth0\n",
  "ｅｔｈ０",
  "a".repeat(300),
  "10.0.0.1",
  "10.0.0.1/33",
  "fd00::1/129",
  "ff:ff:ff:ff:ff:ff",
  "01:00:5e:00:00:01",
  "00:00:00:00:00:00",
  "02:00:00:00:00:01",
  "http://x",
  "https://127.0.0.1:2379",
  "/abs/path",
  "rel/path",
  [],
  [1, 2],
  {},
  { type: "x" },
  "true",
  "false",
];

function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)] as T;
}

function mutate(
  r: () => number,
  base: Record<string, unknown>,
  fields: readonly string[],
): Record<string, unknown> {
  const out: Record<string, unknown> = structuredClone(base);
  const n = 1 + Math.floor(r() * 3);
  for (let i = 0; i < n; i++) {
    const f = pick(r, fields);
    const roll = r();
    if (roll < 0.15) delete out[f];
    else out[f] = pick(r, NASTY);
  }
  return out;
}

function expectCniError(fn: () => unknown, code: number, prefix: RegExp): void {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof CniError)) throw new Error(`not a CniError: ${String(err)}`);
    expect(err.code).toBe(code);
    expect(err.message).toMatch(prefix);
    return;
  }
}

describe(`fuzz (seed ${SEED})`, () => {
  test("network config: a parsed config or code 7 naming a field", () => {
    const r = rng(SEED);
    const base = {
      cniVersion: "1.0.0",
      name: "n",
      type: "ratchet",
      etcd_host: "127.0.0.1",
      etcd_port: "2379",
      parent_interface: "eth0",
      parent_address: "",
      delegate: { type: "bridge" },
      boot_network: { type: "loopback" },
    };
    const fields = [
      ...Object.keys(base),
      "etcd_endpoints",
      "etcd_ca_file",
      "etcd_cert_file",
      "etcd_key_file",
      "etcd_username",
      "etcd_password_file",
      "kubeconfig",
      "child_socket",
      "child_path",
      "log_file",
      "log_level",
      "default_prefix",
      "host_netns",
      "etcd_prefix",
      "child_idle_seconds",
    ];
    const until = performance.now() + BUDGET_MS;
    let parsed = 0;
    for (let i = 0; i < ROUNDS && performance.now() < until; i++) {
      const input = mutate(r, base, fields);
      try {
        const conf = parseNetConf(input);
        parsed++;
        // Whatever was accepted is what ratchet relies on.
        expect(conf.child_socket.startsWith("/")).toBe(true);
        expect(conf.etcd_endpoints !== undefined || conf.etcd_host !== undefined).toBe(true);
      } catch {
        expectCniError(
          () => parseNetConf(input),
          7,
          /^invalid network configuration: field \S+: .+ \((missing|got .*)\)$/s,
        );
      }
    }
    expect(parsed).toBeGreaterThan(0); // the generator does produce valid configs too
  });

  test("pod labels and annotation: links or code 103 naming the pod", () => {
    const r = rng(SEED + 1);
    const labels = {
      ratchet: "true",
      "ratchet.pod_name": "a",
      "ratchet.pair_name": "b",
      "ratchet.local_ip": "192.168.2.100",
      "ratchet.local_ifname": "in1",
      "ratchet.pair_ip": "192.168.2.101",
      "ratchet.pair_ifname": "in2",
      "ratchet.primary": "true",
    };
    const item = {
      peer: "c",
      local_ifname: "eth1",
      peer_ifname: "eth1",
      local_ip: "10.0.0.1/30",
      peer_ip: "10.0.0.2/30",
      mtu: 1400,
      local_mac: "02:00:00:00:00:01",
    };
    const until = performance.now() + BUDGET_MS;
    let ok = 0;
    for (let i = 0; i < ROUNDS && performance.now() < until; i++) {
      const l = mutate(r, labels, Object.keys(labels));
      const stringLabels = Object.fromEntries(
        Object.entries(l).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]),
      );
      const items = Array.from({ length: Math.floor(r() * 3) }, () =>
        mutate(r, item, [...Object.keys(item), "peer_namespace", "peer_mac", "primary"]),
      );
      const annotation =
        r() < 0.1 ? pick(r, ["{", "null", "[1]", "x".repeat(70_000), "[]"]) : JSON.stringify(items);
      const pod = {
        namespace: "default",
        name: "a",
        labels: stringLabels,
        annotations: { "ratchet/links": annotation },
      };
      try {
        const res = podLinks(pod, { defaultPrefix: 24 });
        ok++;
        for (const link of res.links) {
          expect(link.local.pod).toBe("a");
          expect(Buffer.byteLength(link.local.ifname)).toBeLessThanOrEqual(15);
          expect(link.peer.pod).toMatch(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/);
        }
      } catch {
        expectCniError(() => podLinks(pod, { defaultPrefix: 24 }), 103, /^pod default\/a: /);
      }
    }
    expect(ok).toBeGreaterThan(0);
  });
});
