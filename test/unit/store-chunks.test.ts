// The store's chunks and packing as tables: keys parse back to what made them, chunks hold
// what was put in, transactions are packed within etcd's limits and never sent beyond them.
import { describe, expect, test } from "bun:test";
import type { Etcd3 } from "etcd3";
import { type LinkSpec, linkKey } from "../../src/links/spec.ts";
import { fromDeclChunk, pairLinks, toDeclChunks } from "../../src/store/codec.ts";
import { MAX_TXN_OPS, op, pack, sizeOf, TXN_BYTES, txn } from "../../src/store/etcd-ops.ts";
import { DECL_CHUNK, Keys, pairOf, VNI_BLOCKS, vniOf } from "../../src/store/keys.ts";
import { BadRecords, decodeValue, PairChunkSchema, TunnelChunkSchema } from "../../src/store/records.ts";
import { rng } from "../support/rng.ts";

const keys = new Keys("/ratchet");

function spec(i: number, from = "lab/r1", to = "lab/r2"): LinkSpec {
  const [ns, pod] = from.split("/") as [string, string];
  const [pns, ppod] = to.split("/") as [string, string];
  return {
    local: { namespace: ns, pod, ifname: `e${i}`, ips: [`10.0.${i >> 6}.${(i & 63) * 4 + 1}/30`] },
    peer: {
      namespace: pns,
      pod: ppod,
      ifname: `f${i}`,
      ips: [],
      ...(i % 3 === 0 ? { mac: "02:00:00:00:00:01" } : {}),
    },
    ...(i % 5 === 0 ? { mtu: 1400 } : {}),
    source: "annotation",
  };
}

describe("keys", () => {
  test("decl and pair keys parse back to their pods and chunk", () => {
    expect(keys.parseDecl(keys.decl("lab/r1", "lab/r2", 7))).toEqual({
      id: "lab/r1",
      peer: "lab/r2",
      chunk: 7,
    });
    const [a, b] = pairOf("lab/r2", "lab/r1");
    expect([a, b]).toEqual(["lab/r1", "lab/r2"]);
    expect(keys.parsePair(keys.linksPrefix, keys.pairChunk("lab/r2", "lab/r1", 12))).toEqual({
      a: "lab/r1",
      b: "lab/r2",
      chunk: 12,
    });
    const t = keys.tunnelChunk("10.0.0.1", "lab/x", "lab/a", 0);
    expect(keys.parsePair(keys.tunnelsPrefix("10.0.0.1"), t)).toEqual({ a: "lab/a", b: "lab/x", chunk: 0 });
  });

  test("keys of another shape are refused", () => {
    for (const bad of [
      "/ratchet/v1/links/lab/b/lab/a/0000", // pods out of order
      "/ratchet/v1/links/lab/a/lab/b/12", // not a 4-digit chunk
      "/ratchet/v1/links/lab/a/lab/b", // no chunk
      "/ratchet/v1/links/lab/a:x/lab/b/0000",
    ])
      expect(keys.parsePair(keys.linksPrefix, bad)).toBeUndefined();
    expect(keys.parseDecl("/ratchet/v1/decl/lab/r1/lab/r2")).toBeUndefined();
    expect(keys.blockOf(keys.vni(VNI_BLOCKS))).toBeUndefined();
    expect(keys.blockOf(keys.vni(3))).toBe(3);
  });

  test("VNI blocks never overlap and stay within the VXLAN range", () => {
    expect(vniOf(0, 0)).toBe(11);
    expect(vniOf(1, 0)).toBe(vniOf(0, 63) + 1);
    expect(vniOf(VNI_BLOCKS - 1, 63)).toBeLessThanOrEqual(0xffffff);
  });
});

describe("chunks", () => {
  test("a pod's declarations to a peer: chunks of 128, read back as they were declared", () => {
    const specs = Array.from({ length: 300 }, (_, i) => spec(i));
    const chunks = toDeclChunks(specs);
    expect(chunks.map((c) => c.links.length)).toEqual([DECL_CHUNK, DECL_CHUNK, 300 - 2 * DECL_CHUNK]);
    const back = chunks.flatMap((c) => fromDeclChunk("lab/r1", "lab/r2", c));
    const byKey = new Map(back.map((d) => [d.link, d]));
    for (const s of specs) {
      const d = byKey.get(linkKey(s));
      expect(d?.declarer).toBe("lab/r1");
      expect(d?.spec).toEqual(s);
    }
  });

  test("a pair chunk names its links and their VNIs", () => {
    const chunk = {
      kind: "vxlan" as const,
      block: 2,
      ends: {
        "lab/r1": { node: "10.0.0.1", containerId: "c1" },
        "lab/r2": { node: "10.0.0.2", containerId: "c2" },
      },
      links: [["e0", "f0"] as [string, string], ["e1", "f1"] as [string, string]],
    };
    expect(pairLinks("lab/r1", "lab/r2", chunk)).toEqual([
      { key: "lab/r1/e0:lab/r2/f0", vni: vniOf(2, 0) },
      { key: "lab/r1/e1:lab/r2/f1", vni: vniOf(2, 1) },
    ]);
  });

  test("values that do not fit their schema are refused, named", () => {
    const seen: string[] = [];
    const bad = new BadRecords((k, p) => seen.push(`${k}: ${p}`));
    const vxlanWithoutBlock = JSON.stringify({ kind: "vxlan", ends: {}, links: [["a0", "b0"]] });
    expect(decodeValue(PairChunkSchema, "k1", vxlanWithoutBlock, bad)).toBeUndefined();
    const foreignEnd = JSON.stringify({
      pod: "lab/r1",
      containerId: "c1",
      remote: "10.0.0.2",
      builtBy: "10.0.0.2",
      ends: [{ key: "lab/x/e0:lab/y/f0", end: { ifname: "e0", ips: [] }, vni: 11 }],
    });
    expect(decodeValue(TunnelChunkSchema, "k2", foreignEnd, bad)).toBeUndefined();
    expect(seen).toEqual([
      "k1: a vxlan chunk needs a VNI block",
      "k2: an end is not an end of its link on this pod",
    ]);
  });
});

describe("transactions within etcd's limits", () => {
  test("pack keeps every transaction under the limits, units whole and in order", () => {
    const r = rng(3);
    const units = Array.from({ length: 2000 }, (_, i) => ({
      i,
      compares: Math.floor(r() * 3),
      ops: 1 + Math.floor(r() * 6),
      bytes: Math.floor(r() * 60_000),
    }));
    const fixed = { compares: 1, ops: 2, bytes: 200 };
    const groups = pack(units, (u) => u, fixed);
    expect(groups.flat().map((u) => u.i)).toEqual(units.map((u) => u.i));
    for (const g of groups) {
      const sum = (k: "compares" | "ops" | "bytes") => g.reduce((n, u) => n + u[k], fixed[k]);
      expect(sum("compares")).toBeLessThanOrEqual(MAX_TXN_OPS);
      expect(sum("ops")).toBeLessThanOrEqual(MAX_TXN_OPS);
      expect(sum("bytes")).toBeLessThanOrEqual(TXN_BYTES);
    }
  });

  test("sizeOf counts keys and values", () => {
    const s = sizeOf([], [op.put("/k", "x".repeat(1000))]);
    expect(s.ops).toBe(1);
    expect(s.bytes).toBeGreaterThan(1000);
  });

  test("a transaction beyond the limits is refused before it is sent", async () => {
    const client = {} as Etcd3; // never reached
    const puts = Array.from({ length: MAX_TXN_OPS + 1 }, (_, i) => op.put(`/k${i}`, "v"));
    await expect(txn(client, { writes: puts })).rejects.toThrow(/exceeds etcd's limits/);
    const big = [op.put("/k", "x".repeat(1.6 * 1024 * 1024))];
    await expect(txn(client, { writes: big })).rejects.toThrow(/exceeds etcd's limits/);
  });
});
