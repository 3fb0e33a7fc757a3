import { CniError, Code } from "./errors.ts";

export const SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] as const;
export const LATEST_VERSION = "1.1.0";

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

export const atLeast = (version: string, min: string): boolean => compareVersions(version, min) >= 0;

export function requireSupportedVersion(version: string): void {
  if (!(SUPPORTED_VERSIONS as readonly string[]).includes(version)) {
    throw new CniError(
      Code.IncompatibleVersion,
      `cniVersion ${JSON.stringify(version)} is not supported`,
      `supported versions: ${SUPPORTED_VERSIONS.join(", ")}`,
    );
  }
}

/** The first spec version that has each command; older configs get code 1. */
const COMMAND_SINCE: Record<string, string> = { CHECK: "0.4.0", STATUS: "1.1.0", GC: "1.1.0" };

export function requireCommandInVersion(command: string, version: string): void {
  const since = COMMAND_SINCE[command];
  if (since && !atLeast(version, since)) {
    throw new CniError(
      Code.IncompatibleVersion,
      `${command} needs cniVersion ${since} or later; the config says ${JSON.stringify(version)}`,
    );
  }
}

/** The highest version both sides support, not above `max`; undefined when none. */
export function bestCommonVersion(theirs: readonly string[], max: string): string | undefined {
  return SUPPORTED_VERSIONS.filter((v) => theirs.includes(v) && compareVersions(v, max) <= 0).at(-1);
}
