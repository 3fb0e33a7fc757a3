// The qdisc codec against iproute2's tc: test/fixtures/qdisc holds the exact requests tc sent
// for a table of tbf and netem settings (scripts/qdisc-fixtures.ts regenerates them). Our
// request for the same declaration must be the same bytes (seq, port id and ifindex taken
// from the capture), and decoding tc's request or the kernel's dump must give the declaration.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  Attrs,
  Message,
  NLM_F_ACK,
  NLM_F_CREATE,
  NLM_F_REPLACE,
  NLM_F_REQUEST,
  RTM_NEWQDISC,
  parseMessages,
} from "../../src/netlink/nl.ts";
import {
  type Impairment,
  type NetemImpairment,
  TC_H_ROOT,
  TCA_KIND,
  TCA_OPTIONS,
  TCMSG_LEN,
  TcMsg,
  decodeImpairment,
  decodeQdisc,
  impairmentProblem,
  percentToU32,
  qdiscAttrs,
  sameImpairment,
  u32ToPercent,
} from "../../src/netlink/tc.ts";
import { rng } from "../support/rng.ts";

interface Fixture {
  name: string;
  command: string;
  tc: string;
  compare: "bytes" | "decode";
  declared: Impairment;
  mtu: number;
  note?: string;
  request: string;
  kernelDump?: string;
}

const DIR = join(import.meta.dir, "..", "fixtures", "qdisc");
const FIXTURES: Fixture[] = readdirSync(DIR)
  .filter((f) => f.endsWith(".json"))
  .sort()
  .map((f) => ({ name: f.replace(/\.json$/, ""), ...JSON.parse(readFileSync(join(DIR, f), "utf8")) }));

const hex = (s: string) => Uint8Array.from(Buffer.from(s, "hex"));
const toHex = (b: Uint8Array) => Buffer.from(b).toString("hex");

/** A declaration without its zero-valued netem fields: what reading the kernel back gives. */
function withoutZeros(imp: Impairment): Impairment {
  return Object.fromEntries(Object.entries(imp).filter(([, v]) => v !== 0)) as unknown as Impairment;
}

test("the fixtures cover tbf and every netem field, 64-bit rates, both tc versions", () => {
  expect(FIXTURES.length).toBeGreaterThanOrEqual(20);
  const netem = FIXTURES.map((f) => f.declared).filter((d): d is NetemImpairment => d.kind === "netem");
  for (const field of ["delayMs", "jitterMs", "lossPercent", "duplicatePercent"] as const)
    expect(netem.some((d) => (d[field] ?? 0) > 0)).toBe(true);
  for (const field of ["corruptPercent", "reorderPercent", "rateKbit"] as const)
    expect(netem.some((d) => (d[field] ?? 0) > 0)).toBe(true);
  expect(
    FIXTURES.filter((f) => f.declared.kind === "tbf" && f.declared.rateKbit * 125 > 2 ** 32).length,
  ).toBe(2);
  expect(netem.some((d) => (d.rateKbit ?? 0) * 125 > 2 ** 32)).toBe(true);
  expect(FIXTURES.filter((f) => f.compare === "bytes").length).toBeGreaterThanOrEqual(18);
});

describe.each(FIXTURES.map((f) => [f.name, f] as const))("%s", (_name, fx) => {
  const sent = parseMessages(hex(fx.request));
  const msg = sent[0]!;
  const tcm = TcMsg.parse(msg.payload);
  const attrs = Attrs.parse(msg.payload.subarray(TCMSG_LEN));

  test("is one RTM_NEWQDISC for the root, create-or-replace, acked", () => {
    expect(sent.length).toBe(1);
    expect(msg.type).toBe(RTM_NEWQDISC);
    expect(msg.flags).toBe(NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE);
    expect(tcm.parent).toBe(TC_H_ROOT);
    expect(tcm.handle).toBe(0);
    expect(attrs.str(TCA_KIND)).toBe(fx.declared.kind);
  });

  if (fx.compare === "bytes") {
    const args = fx.command.replace(/^tc qdisc replace dev q0 root /, "");
    test(`our request is tc's, byte for byte (${args})`, () => {
      const ours = new Message(
        RTM_NEWQDISC,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE,
        new TcMsg(tcm.ifindex, 0, TC_H_ROOT),
        qdiscAttrs(fx.declared, fx.mtu),
        msg.seq,
        msg.pid,
      ).encode();
      expect(toHex(ours)).toBe(fx.request);
    });
  }

  test("decoding tc's request gives the declaration back", () => {
    const decoded = decodeImpairment(fx.declared.kind, attrs.get(TCA_OPTIONS));
    expect(decoded).toEqual(withoutZeros(fx.declared));
    expect(sameImpairment(decoded, fx.declared)).toBe(true);
  });

  if (fx.kernelDump) {
    test("decoding the kernel's dump of it gives the declaration back", () => {
      const [answer] = parseMessages(hex(fx.kernelDump as string));
      const q = decodeQdisc(answer!);
      expect(q.kind).toBe(fx.declared.kind);
      expect(q.parent).toBe(TC_H_ROOT);
      expect(q.handle).not.toBe(0);
      expect(q.impairment).toEqual(fx.declared);
    });
  }
});

describe("percentages", () => {
  test("scale as tc scales them: rint(p / 100 * (2^32 - 1)), ties to even", () => {
    expect(percentToU32(0)).toBe(0);
    expect(percentToU32(100)).toBe(0xffffffff);
    expect(percentToU32(1)).toBe(42949673);
    expect(percentToU32(50)).toBe(2147483648); // 2147483647.5: the tie goes to the even neighbour
  });

  test("read back as the shortest decimal with the same encoding (7 decimals round-trip)", () => {
    const random = rng(0x9e77);
    for (let i = 0; i < 20_000; i++) {
      const digits = Math.floor(random() * 8);
      const p = Number((random() * 100).toFixed(digits));
      expect(u32ToPercent(percentToU32(p))).toBe(p);
    }
    // The smallest probability reads as the shortest decimal that still encodes to it.
    expect(u32ToPercent(1)).toBe(2e-8);
    expect(percentToU32(2e-8)).toBe(1);
  });
});

describe("impairmentProblem", () => {
  const bad: Array<[string, Impairment, RegExp]> = [
    [
      "delay above a minute",
      { kind: "netem", delayMs: 60_001 },
      /netem delayMs 60001: must be a number 0\.\.60000 ms/,
    ],
    ["negative delay", { kind: "netem", delayMs: -1 }, /delayMs -1/],
    [
      "jitter the kernel would clamp",
      { kind: "netem", jitterMs: 2147.484 },
      /jitterMs 2147.484: .* 0\.\.2147.483 ms/,
    ],
    ["NaN jitter", { kind: "netem", jitterMs: Number.NaN }, /jitterMs null: must be a number/],
    ["sub-microsecond delay", { kind: "netem", delayMs: 0.0005 }, /delayMs 0.0005: finer than 1 microsecond/],
    [
      "loss above 100",
      { kind: "netem", lossPercent: 100.5 },
      /lossPercent 100.5: must be a number 0\.\.100 %/,
    ],
    ["negative corrupt", { kind: "netem", corruptPercent: -0.1 }, /corruptPercent -0.1/],
    [
      "netem rate below 8",
      { kind: "netem", rateKbit: 7 },
      /netem rateKbit 7: must be a number 8\.\.100000000/,
    ],
    ["fractional rate", { kind: "netem", rateKbit: 8.5 }, /rateKbit 8.5: must be a whole number/],
    ["tbf rate above 100 Gbit", { kind: "tbf", rateKbit: 100_000_001 }, /tbf rateKbit 100000001/],
    [
      "reorder without delay",
      { kind: "netem", reorderPercent: 5 },
      /reorderPercent 5: needs a delayMs above 0/,
    ],
    ["unknown kind", { kind: "htb" } as unknown as Impairment, /kind "htb": must be "tbf" or "netem"/],
  ];
  test.each(bad)("%s", (_what, imp, problem) => {
    expect(impairmentProblem(imp)).toMatch(problem);
    expect(() => qdiscAttrs(imp, 1500)).toThrow(problem);
  });

  test("accepts the edges", () => {
    for (const imp of [
      { kind: "netem", delayMs: 60_000, jitterMs: 0.001, lossPercent: 0, reorderPercent: 100 },
      { kind: "netem", reorderPercent: 0 },
      { kind: "netem" },
      { kind: "tbf", rateKbit: 8 },
      { kind: "tbf", rateKbit: 100_000_000 },
    ] as Impairment[])
      expect(impairmentProblem(imp)).toBeUndefined();
  });
});

test("sameImpairment: absent netem fields are 0, percentages compare at the kernel's resolution", () => {
  expect(sameImpairment({ kind: "netem", delayMs: 0 }, { kind: "netem" })).toBe(true);
  expect(sameImpairment({ kind: "netem", lossPercent: 1e-9 }, { kind: "netem" })).toBe(true);
  expect(sameImpairment({ kind: "netem", lossPercent: 1 }, { kind: "netem" })).toBe(false);
  expect(sameImpairment({ kind: "netem", delayMs: 10 }, { kind: "netem", delayMs: 10.001 })).toBe(false);
  expect(sameImpairment({ kind: "tbf", rateKbit: 1000 }, { kind: "netem", rateKbit: 1000 })).toBe(false);
  expect(sameImpairment({ kind: "tbf", rateKbit: 1000 }, { kind: "tbf", rateKbit: 1000 })).toBe(true);
  expect(sameImpairment(undefined, undefined)).toBe(true);
  expect(sameImpairment(undefined, { kind: "netem" })).toBe(false);
});
