// One pod sandbox run through CRI, and what the tests read from inside its netns.
import type { IfaceInfo } from "../cluster.ts";
import { run } from "../env.ts";
import type { CriNode } from "./bed.ts";
import type { PodSandboxStatusResponse } from "./client.ts";

/** One pod sandbox run through CRI. */
export class Sandbox {
  constructor(
    readonly node: CriNode,
    readonly id: string,
    readonly name: string,
    readonly namespace: string,
    /** The sandbox's network namespace (a mount under containerd's state dir). */
    readonly netns: string,
    /** The pause process. */
    readonly pid: number,
  ) {}

  /** Runs a command inside the pod's netns. */
  exec(cmd: string[], timeoutMs = 10_000): ReturnType<typeof run> {
    return run(["nsenter", `--net=${this.netns}`, ...cmd], { timeoutMs });
  }

  async status(verbose = false): Promise<PodSandboxStatusResponse> {
    return this.node.containerd.cri.podSandboxStatus(this.id, verbose);
  }

  stop(): Promise<void> {
    return this.node.containerd.cri.stopPodSandbox(this.id);
  }

  remove(): Promise<void> {
    return this.node.containerd.cri.removePodSandbox(this.id);
  }

  /** A link of the pod's netns, or undefined when it is not there. */
  async iface(ifname: string): Promise<IfaceInfo | undefined> {
    const r = await this.exec(["ip", "-j", "-d", "link", "show", "dev", ifname]);
    if (r.code !== 0) return undefined;
    const raw = (JSON.parse(r.stdout) as Array<Record<string, unknown>>)[0];
    if (!raw) return undefined;
    const info = (raw.linkinfo ?? {}) as { info_kind?: string; info_data?: Record<string, unknown> };
    const data = info.info_data ?? {};
    return {
      name: String(raw.ifname),
      kind: info.info_kind,
      vni: typeof data.id === "number" ? data.id : undefined,
      remote: typeof data.remote === "string" ? data.remote : undefined,
      local: typeof data.local === "string" ? data.local : undefined,
      mtu: Number(raw.mtu),
      mac: String(raw.address),
      state: String(raw.operstate),
      up: ((raw.flags ?? []) as string[]).includes("UP"),
      raw,
    };
  }

  /** Names of the pod's links other than lo. */
  async ifaceNames(): Promise<string[]> {
    const r = await this.exec(["ip", "-j", "link", "show"]);
    if (r.code !== 0) throw new Error(`ip link in ${this.netns}: ${r.stderr.trim()}`);
    return (JSON.parse(r.stdout) as Array<{ ifname: string }>).map((l) => l.ifname).filter((n) => n !== "lo");
  }

  /** Global addresses ("ip/prefix") of a link of the pod. */
  async addrs(ifname: string): Promise<string[]> {
    const r = await this.exec(["ip", "-j", "addr", "show", "dev", ifname]);
    if (r.code !== 0) throw new Error(`ip addr of ${ifname} in ${this.netns}: ${r.stderr.trim()}`);
    const list = JSON.parse(r.stdout) as Array<{
      addr_info: Array<{ local: string; prefixlen: number; scope: string }>;
    }>;
    return (list[0]?.addr_info ?? [])
      .filter((a) => a.scope !== "link")
      .map((a) => `${a.local}/${a.prefixlen}`);
  }

  /** Pings ip from the pod until one echo comes back (true) or timeoutMs passes (false). */
  async ping(ip: string, timeoutMs = 8000): Promise<boolean> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const r = await this.exec(["ping", "-n", "-c1", "-W1", ip], 5000);
      if (r.code === 0) return true;
      if (Date.now() >= until) return false;
    }
  }
}
