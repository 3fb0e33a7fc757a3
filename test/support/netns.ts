// Network namespaces for tests, made with iproute2 (tests may use it; the product may not).
import { existsSync } from "node:fs";
import { run, uniqueName } from "./env.ts";

export interface TestNetns {
  name: string;
  path: string;
  [Symbol.asyncDispose](): Promise<void>;
}

async function ip(args: string[]): Promise<string> {
  const r = await run(["ip", ...args]);
  if (r.code !== 0) throw new Error(`ip ${args.join(" ")} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** Runs `ip` inside a namespace (or the host when ns is undefined), throwing on failure. */
export function ipIn(ns: string | undefined, args: string[]): Promise<string> {
  return ip(ns ? ["-n", ns, ...args] : args);
}

/** A fresh netns with loopback up, deleted on dispose (which also deletes its links). */
export async function makeNetns(tag = "n"): Promise<TestNetns> {
  const name = uniqueName(tag);
  await ip(["netns", "add", name]);
  await ip(["-n", name, "link", "set", "lo", "up"]);
  const path = `/var/run/netns/${name}`;
  return {
    name,
    path,
    async [Symbol.asyncDispose]() {
      if (existsSync(path)) await run(["ip", "netns", "delete", name]);
    },
  };
}

/** Parsed `ip -j -d link show` for one link in a namespace, or undefined when absent. */
export async function linkInfo(
  ns: string | undefined,
  ifname: string,
): Promise<Record<string, unknown> | undefined> {
  const r = await run(["ip", ...(ns ? ["-n", ns] : []), "-j", "-d", "link", "show", "dev", ifname]);
  if (r.code !== 0) return undefined;
  const list = JSON.parse(r.stdout) as Array<Record<string, unknown>>;
  return list[0];
}

/** The addresses (as "ip/prefix") of a link in a namespace. */
export async function addresses(ns: string | undefined, ifname: string): Promise<string[]> {
  const out = await ipIn(ns, ["-j", "addr", "show", "dev", ifname]);
  const list = JSON.parse(out) as Array<{
    addr_info: Array<{ local: string; prefixlen: number; scope: string }>;
  }>;
  return (list[0]?.addr_info ?? []).filter((a) => a.scope !== "link").map((a) => `${a.local}/${a.prefixlen}`);
}
