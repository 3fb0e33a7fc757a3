import { describe, expect, test } from "bun:test";
import { pickMode, UsageError } from "../../src/main.ts";

describe("pickMode", () => {
  test.each([
    ["/opt/cni/bin/ratchet", [], "parent"],
    ["ratchet", [], "parent"],
    ["/opt/cni/bin/ratchet-child", [], "child"],
    ["./ratchet-child", ["--config", "x"], "child"],
    ["/usr/local/bin/anything-else", [], "parent"],
    ["/opt/cni/bin/ratchet", ["--mode=child"], "child"],
    ["/opt/cni/bin/ratchet-child", ["--mode=parent"], "parent"],
    ["/opt/cni/bin/ratchet", ["--mode", "child", "--check"], "child"],
  ] as const)("%s %p -> %s", (argv0, args, mode) => {
    expect(pickMode(argv0, args).mode).toBe(mode);
  });

  test("removes --mode from the remaining arguments", () => {
    expect(pickMode("ratchet", ["--check", "--mode=child", "--config", "f"]).rest).toEqual([
      "--check",
      "--config",
      "f",
    ]);
  });

  test("an unknown mode is a usage error that names it", () => {
    expect(() => pickMode("ratchet", ["--mode=sidecar"])).toThrow(UsageError);
    expect(() => pickMode("ratchet", ["--mode=sidecar"])).toThrow(
      'unknown mode "sidecar": expected parent or child',
    );
    expect(() => pickMode("ratchet", ["--mode"])).toThrow("--mode needs a value");
  });
});
