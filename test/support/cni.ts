// Drives the compiled plugin exactly as a container runtime does: env + config on stdin.
import { SUPPORTED_VERSIONS } from "../../src/cni/versions.ts";
import { hiddenCheckout, installedBin, run, type RunResult } from "./env.ts";

export const CNI_PATH = "/usr/lib/cni";
/** Every version ratchet speaks: tests that loop over versions cover a new one by themselves. */
export const VERSIONS = SUPPORTED_VERSIONS;

export interface Invocation {
  command: string;
  conf: unknown;
  containerId?: string;
  netns?: string;
  ifname?: string;
  args?: string;
  path?: string;
  /** Extra or overriding variables; undefined removes one. */
  env?: Record<string, string | undefined>;
  /** Defaults to the installed copy of bin/ratchet. */
  bin?: string;
  /** Run with the checkout visible (default: hidden, as on a node). */
  visible?: boolean;
}

export function cniEnv(inv: Invocation): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = {
    PATH: process.env.PATH,
    CNI_COMMAND: inv.command,
    CNI_CONTAINERID: inv.containerId,
    CNI_NETNS: inv.netns,
    CNI_IFNAME: inv.ifname,
    CNI_PATH: inv.path ?? CNI_PATH,
    CNI_ARGS: inv.args,
    ...inv.env,
  };
  for (const k of Object.keys(env)) if (env[k] === undefined) delete env[k];
  return env;
}

export async function cni(inv: Invocation): Promise<RunResult & { json: unknown }> {
  const stdin = typeof inv.conf === "string" ? inv.conf : JSON.stringify(inv.conf);
  const bin = inv.bin ?? installedBin();
  const r = await run(inv.visible ? [bin] : hiddenCheckout([bin]), { env: cniEnv(inv), stdin });
  let json: unknown;
  try {
    json = r.stdout.trim() ? JSON.parse(r.stdout) : undefined;
  } catch {
    json = undefined;
  }
  return { ...r, json };
}

export interface CniResultJson {
  cniVersion: string;
  interfaces?: Array<{ name: string; mac?: string; sandbox?: string; mtu?: number }>;
  ips?: Array<{ version?: string; interface?: number; address: string; gateway?: string }>;
  routes?: Array<{ dst: string; gw?: string }>;
  dns?: Record<string, unknown>;
}

const CIDR4 = /^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/;
const CIDR6 = /^[0-9a-f:]+\/\d{1,3}$/i;

/** The checks libcni applies to a result, plus the version rules of each spec version. */
export function assertValidResult(x: unknown, version: string): CniResultJson {
  const r = x as CniResultJson;
  if (r.cniVersion !== version) throw new Error(`result cniVersion ${r.cniVersion}, expected ${version}`);
  const ifaces = r.interfaces ?? [];
  for (const ip of r.ips ?? []) {
    if (!CIDR4.test(ip.address) && !CIDR6.test(ip.address))
      throw new Error(`ips address ${ip.address} is not CIDR`);
    if (ip.gateway !== undefined && !/^[0-9a-f.:]+$/i.test(ip.gateway))
      throw new Error(`gateway ${ip.gateway} is not an IP`);
    if (ip.interface !== undefined && (ip.interface < 0 || ip.interface >= ifaces.length))
      throw new Error(`ips interface ${ip.interface} out of range`);
    const wantVersion = version.startsWith("0.") ? (ip.address.includes(":") ? "6" : "4") : undefined;
    if (ip.version !== wantVersion)
      throw new Error(`ips version ${ip.version} for ${version}, expected ${wantVersion}`);
  }
  return r;
}
