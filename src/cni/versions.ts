// The CNI spec versions, in one table: which exist, which ratchet speaks, which commands
// each defines and how a result is written in it. Everything version-dependent reads this.
import { CniError, Code } from "./errors.ts";
import type { Interface, Route } from "./result.ts";

/** Every command ratchet knows, in the order error messages list them. */
export const COMMANDS = ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"] as const;
export type Command = (typeof COMMANDS)[number];
/** Commands a plugin is skipped for (not failed) when none of its versions has them (spec 1.1.0). */
export const SKIPPED_WHEN_UNKNOWN: readonly Command[] = ["STATUS", "GC"];

/** How a result is written in a version (the model in result.ts is the newest shape). */
export interface ResultShape {
  /**
   * "ip4/ip6": one address per family, `{ip4: {ip, gateway, routes}, ip6, dns}`, no
   * interfaces. "lists": `interfaces`, `ips` (pointing into interfaces), `routes`, `dns`.
   */
  form: "ip4/ip6" | "lists";
  /** Each ips entry carries `version: "4" | "6"`. */
  ipVersion: boolean;
  /** The interface fields this version has ("lists" only). */
  interfaceFields: readonly (keyof Interface)[];
  /** The route fields this version has. */
  routeFields: readonly (keyof Route)[];
}

export interface SpecVersion {
  version: string;
  /** Ratchet accepts it as a config's cniVersion and prints its results in it. */
  supported: boolean;
  /** The commands this version of the spec defines. */
  commands: readonly Command[];
  result: ResultShape;
}

const IP4_IP6: ResultShape = {
  form: "ip4/ip6",
  ipVersion: false,
  interfaceFields: [],
  routeFields: ["dst", "gw"],
};
const LISTS_0_3: ResultShape = {
  form: "lists",
  ipVersion: true,
  interfaceFields: ["name", "mac", "sandbox"],
  routeFields: ["dst", "gw"],
};
const LISTS_1_0: ResultShape = { ...LISTS_0_3, ipVersion: false };
const LISTS_1_1: ResultShape = {
  ...LISTS_1_0,
  interfaceFields: [...LISTS_1_0.interfaceFields, "mtu", "socketPath", "pciID"],
  routeFields: [...LISTS_1_0.routeFields, "mtu", "advmss", "priority", "table", "scope"],
};
const UP_TO_0_3 = ["ADD", "DEL", "VERSION"] as const;
const UP_TO_0_4 = [...UP_TO_0_3, "CHECK"] as const;

/** Oldest first. A version not listed is unknown: refused in a config, read as its next-lower neighbour. */
export const SPEC_VERSIONS: readonly SpecVersion[] = [
  { version: "0.1.0", supported: false, commands: ["ADD", "DEL"], result: IP4_IP6 },
  { version: "0.2.0", supported: false, commands: UP_TO_0_3, result: IP4_IP6 },
  { version: "0.3.0", supported: true, commands: UP_TO_0_3, result: LISTS_0_3 },
  { version: "0.3.1", supported: true, commands: UP_TO_0_3, result: LISTS_0_3 },
  { version: "0.4.0", supported: true, commands: UP_TO_0_4, result: LISTS_0_3 },
  { version: "1.0.0", supported: true, commands: UP_TO_0_4, result: LISTS_1_0 },
  { version: "1.1.0", supported: true, commands: [...UP_TO_0_4, "STATUS", "GC"], result: LISTS_1_1 },
];

export const SUPPORTED_VERSIONS: readonly string[] = SPEC_VERSIONS.filter((s) => s.supported).map(
  (s) => s.version,
);
export const LATEST_VERSION = SUPPORTED_VERSIONS.at(-1) as string;
/** Asked of a plugin for VERSION: every plugin understands the oldest. */
export const OLDEST_VERSION = (SPEC_VERSIONS[0] as SpecVersion).version;

/** Compares dotted versions numerically: <0, 0, >0. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** The table row for `version`, or for the newest listed version below it (e.g. 0.3.2 reads as 0.3.1). */
export function specOf(version: string): SpecVersion {
  return (
    SPEC_VERSIONS.findLast((s) => compareVersions(s.version, version) <= 0) ??
    (SPEC_VERSIONS[0] as SpecVersion)
  );
}

export function requireSupportedVersion(version: string): void {
  if (!SUPPORTED_VERSIONS.includes(version)) {
    throw new CniError(
      Code.IncompatibleVersion,
      `cniVersion ${JSON.stringify(version)} is not supported`,
      `supported versions: ${SUPPORTED_VERSIONS.join(", ")}`,
    );
  }
}

/** A config of `version` may ask for `command` only when that version defines it; else code 1. */
export function requireCommandInVersion(command: Command, version: string): void {
  if (specOf(version).commands.includes(command)) return;
  const since = SPEC_VERSIONS.find(
    (s) => compareVersions(s.version, version) > 0 && s.commands.includes(command),
  );
  const need = since ? `cniVersion ${since.version} or later` : "a cniVersion that defines it";
  throw new CniError(
    Code.IncompatibleVersion,
    `${command} needs ${need}; the config says ${JSON.stringify(version)}`,
  );
}

/**
 * The highest version both sides support, not above `max`, and (given `command`) defining
 * that command; undefined when none.
 */
export function bestCommonVersion(
  theirs: readonly string[],
  max: string,
  command?: Command,
): string | undefined {
  return SPEC_VERSIONS.filter(
    (s) =>
      s.supported &&
      theirs.includes(s.version) &&
      compareVersions(s.version, max) <= 0 &&
      (command === undefined || s.commands.includes(command)),
  ).at(-1)?.version;
}
