import { describe, expect, test } from "bun:test";
import { CniError } from "../../src/cni/errors.ts";
import {
  bestCommonVersion,
  COMMANDS,
  compareVersions,
  LATEST_VERSION,
  requireCommandInVersion,
  requireSupportedVersion,
  SPEC_VERSIONS,
  specOf,
  SUPPORTED_VERSIONS,
} from "../../src/cni/versions.ts";

describe("the CNI version table", () => {
  test("lists the versions oldest first, each with ADD and DEL, and every command somewhere", () => {
    const versions = SPEC_VERSIONS.map((s) => s.version);
    expect(versions).toEqual(versions.toSorted(compareVersions));
    expect(new Set(versions).size).toBe(versions.length);
    for (const s of SPEC_VERSIONS) expect(s.commands).toEqual(expect.arrayContaining(["ADD", "DEL"]));
    expect(new Set(SPEC_VERSIONS.flatMap((s) => s.commands))).toEqual(new Set(COMMANDS));
    expect(LATEST_VERSION).toBe(SUPPORTED_VERSIONS.at(-1) as string);
  });

  test("ratchet speaks 0.3.0 to 1.1.0; 0.1.0 and 0.2.0 are only read", () => {
    expect(SUPPORTED_VERSIONS).toEqual(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    expect(() => requireSupportedVersion("0.2.0")).toThrow(
      new CniError(1, 'cniVersion "0.2.0" is not supported', ""),
    );
    expect(() => requireSupportedVersion("1.0.0")).not.toThrow();
  });

  test("a version between or above the listed ones reads as its next-lower neighbour", () => {
    expect(specOf("0.3.2").version).toBe("0.3.1");
    expect(specOf("9.0.0").version).toBe("1.1.0");
    expect(specOf("0.0.1").version).toBe("0.1.0");
  });

  test("a command the config's version lacks is code 1, naming the first version that has it", () => {
    expect(() => requireCommandInVersion("CHECK", "0.3.1")).toThrow(
      'CHECK needs cniVersion 0.4.0 or later; the config says "0.3.1"',
    );
    expect(() => requireCommandInVersion("GC", "1.0.0")).toThrow(
      'GC needs cniVersion 1.1.0 or later; the config says "1.0.0"',
    );
    for (const c of ["ADD", "DEL", "CHECK", "STATUS", "GC"] as const) {
      expect(() => requireCommandInVersion(c, "1.1.0")).not.toThrow();
    }
    expect(() => requireCommandInVersion("CHECK", "0.4.0")).not.toThrow();
  });

  test("the common version with a plugin is the highest both speak, below max, having the command", () => {
    const plugin = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
    expect(bestCommonVersion(plugin, "1.1.0")).toBe("1.0.0");
    expect(bestCommonVersion(plugin, "0.4.0")).toBe("0.4.0");
    expect(bestCommonVersion(plugin, "1.1.0", "STATUS")).toBeUndefined();
    expect(bestCommonVersion([...plugin, "1.1.0"], "1.1.0", "GC")).toBe("1.1.0");
    expect(bestCommonVersion(["0.3.1"], "1.1.0", "CHECK")).toBeUndefined();
    // 0.1.0 and 0.2.0 are never chosen: ratchet does not write their configs.
    expect(bestCommonVersion(["0.1.0", "0.2.0"], "1.1.0")).toBeUndefined();
  });
});
