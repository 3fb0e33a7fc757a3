// Filled in by scripts/build.ts through `define`; running from source gives "dev".
declare const RATCHET_VERSION: string;
declare const RATCHET_COMMIT: string;
declare const RATCHET_BUILD_ID: string;
declare const RATCHET_BUILD_TIME: number;

export const VERSION: string = typeof RATCHET_VERSION === "string" ? RATCHET_VERSION : "0.0.0-dev";
export const COMMIT: string = typeof RATCHET_COMMIT === "string" ? RATCHET_COMMIT : "unknown";
/** Distinguishes two builds of one version: the child reports it so a newer parent can replace it. */
export const BUILD_ID: string = typeof RATCHET_BUILD_ID === "string" ? RATCHET_BUILD_ID : `dev-${COMMIT}`;
/** When this binary was built (epoch ms): a parent only replaces a child built before it. */
export const BUILD_TIME: number = typeof RATCHET_BUILD_TIME === "number" ? RATCHET_BUILD_TIME : 0;

/** The agent's answer to `hello`: which build serves this socket. */
export function hello(): { buildId: string; buildTime: number; version: string; pid: number } {
  return { buildId: BUILD_ID, buildTime: BUILD_TIME, version: VERSION, pid: process.pid };
}
