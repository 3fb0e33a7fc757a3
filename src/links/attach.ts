// Linking pods, part one: what a linker is (node, VTEP, settings) and ADD: registers the pod
// in etcd, plans, records what it builds, builds veth pairs and VXLAN ends in batches.
//
// Who builds a link: the pod whose registration sees the peer already registered. A
// registration writes the endpoint (and its index entries under its peers) and reads the
// peers' in one transaction per group of peers, and etcd orders transactions, so of two pods
// starting together at least one sees the other: never neither (no lost link). Should both
// see each other, the first to record the pair's first chunk builds it (store.commit).
//
// What it trusts: netns paths only from this node's own CNI calls (NodeState); values from
// etcd only after the store's schema checks; interfaces only when they carry the link's mark.
import { existsSync } from "node:fs";
import type { NetConf } from "../cni/config.ts";
import type { CniEnv } from "../cni/env.ts";
import { CniError, Code } from "../cni/errors.ts";
import { show } from "../cni/names.ts";
import type { AttachedInterface } from "../cni/result.ts";
import type { Logger } from "../log.ts";
import { firstIpv4Address } from "../netlink/index.ts";
import { type LinkObserver, quietObserver } from "../observe/link-observer.ts";
import type { Committed, LinkStore } from "../store/link-store.ts";
import type { EndpointRecord } from "../store/records.ts";
import {
  type BuiltEnd,
  buildTunnelEnds,
  buildVeths,
  type EndProps,
  type Place,
  removeEnds,
  type VethJob,
} from "./builder.ts";
import type { NodeState } from "./node-state.ts";
import { type Build, plan } from "./planner.ts";
import { recordObserved, removeLinks } from "./observed.ts";
import { type LinkSpec, podId, sides } from "./spec.ts";

/** The node-level settings a linker works with (one per etcd + prefix + node). */
export interface NodeSettings {
  prefix: string;
  parentInterface: string | undefined;
  parentAddress: string;
  hostNetns: string | undefined;
  /** The node's Kubernetes name: what names it in etcd when it has no VTEP. */
  nodeName: string;
}

export function nodeSettings(conf: NetConf, nodeName: string): NodeSettings {
  return {
    nodeName,
    prefix: conf.etcd_prefix,
    parentInterface: conf.parent_interface,
    parentAddress: conf.parent_address,
    hostNetns: conf.host_netns,
  };
}

/**
 * This node's VTEP: parent_address, else the first IPv4 address of parent_interface; none
 * when neither is set (links on one node work, links across nodes cannot be built).
 */
export function findVtep(settings: NodeSettings): string | undefined {
  const { parentAddress, parentInterface, hostNetns } = settings;
  if (parentAddress) return parentAddress;
  if (!parentInterface) return undefined;
  const addr = firstIpv4Address(parentInterface, hostNetns);
  if (!addr) {
    throw new CniError(
      Code.Netlink,
      `parent_interface ${show(parentInterface)} has no IPv4 address to use as this node's VTEP ` +
        "(set parent_address)",
    );
  }
  return addr;
}

export type Call = Omit<CniEnv, "args">;

export function podOf(env: Call): string {
  if (!env.pod) throw new CniError(Code.Internal, "a link call without K8S_POD_NAMESPACE and K8S_POD_NAME");
  return podId({ namespace: env.pod.namespace, pod: env.pod.name });
}

/** At most this many links named in one log line; the line gives the count. */
const LOG_LINKS = 8;

/** Log lines about many links: one per group, with the count and the first few keys. */
function grouped<T>(items: T[], key: (x: T) => string): Map<string, T[]> {
  const out = new Map<string, T[]>();
  for (const x of items) {
    const k = key(x);
    const list = out.get(k);
    if (list) list.push(x);
    else out.set(k, [x]);
  }
  return out;
}

export class LinkerBase {
  private identity: { node: string; vtep: string | undefined } | undefined;
  /** Hears of links built, waiting, failed, removed (Events, metrics, network-status). */
  observer: LinkObserver = quietObserver;

  constructor(
    readonly store: LinkStore,
    readonly settings: NodeSettings,
    readonly state: NodeState,
    readonly log: Logger,
  ) {}

  /** This node: its VTEP address when it has one, else its Kubernetes node name. */
  get node(): string {
    return this.whoAmI().node;
  }

  get vtep(): string | undefined {
    return this.whoAmI().vtep;
  }

  protected whoAmI(): { node: string; vtep: string | undefined } {
    if (!this.identity) {
      const vtep = findVtep(this.settings);
      this.identity = { node: vtep ?? this.settings.nodeName, vtep };
    }
    return this.identity;
  }

  /** Where pod `id`'s container `containerId` lives on this node, from our own CNI calls. */
  protected place(id: string, containerId: string): Place | undefined {
    const c = this.state.get(containerId);
    return c && c.pod === id ? { pod: id, netns: c.netns } : undefined;
  }

  protected tunnel(vni: number, remote: string, props: EndProps) {
    return {
      vni,
      remote,
      ...props,
      underlay: this.settings.parentInterface,
      hostNetns: this.settings.hostNetns,
    };
  }

  // ---- ADD ---------------------------------------------------------------------------

  /**
   * Registers the container and makes its links match `declared`: builds what is missing,
   * changes in place what exists, removes what no pod declares any more. `live`: a change to
   * a running pod (not an ADD): a failure undoes only what this call built.
   */
  async attach(
    env: Call,
    declared: LinkSpec[],
    /** declarers: pods the node's pod cache knows to declare links to this one (a read hint). */
    opts: { live?: boolean; declarers?: string[] } = {},
  ): Promise<AttachedInterface[]> {
    const id = podOf(env);
    const { node, vtep } = this.whoAmI();
    const me: Place = { pod: id, netns: env.netns };
    const endpoint: EndpointRecord = {
      namespace: env.pod?.namespace as string,
      pod: env.pod?.name as string,
      containerId: env.containerId,
      ifname: env.ifname,
      node,
      ...(vtep ? { vtep } : {}),
      createdAt: new Date().toISOString(),
    };
    // This container is ours from now on: a peer's ADD running meanwhile may build into it.
    const links = this.state.get(env.containerId)?.links ?? {};
    this.state.set(env.containerId, { pod: id, netns: env.netns, ifname: env.ifname, links });
    this.state.flush();
    const forget = () => {
      if (opts.live) return;
      this.state.delete(env.containerId);
      this.state.flush();
    };
    // Round trip 1: register and read.
    let reg: Awaited<ReturnType<LinkStore["register"]>>;
    try {
      reg = await this.store.register(endpoint, declared, opts.declarers);
    } catch (err) {
      forget();
      throw err;
    }
    let p: ReturnType<typeof plan>;
    try {
      p = plan({ id, containerId: env.containerId, cniIfname: env.ifname, node, vtep, declared, ...reg });
    } catch (err) {
      if (err instanceof CniError) this.observer.linkConflict(id, err.message);
      forget();
      const undo = opts.live
        ? this.store.restoreDeclarations(endpoint, declared, reg.previous)
        : this.store.unregister(endpoint, reg.rev, declared);
      await undo.catch((e: unknown) =>
        this.log.warn("could not undo a refused registration", { pod: id, error: (e as Error).message }),
      );
      throw err;
    }
    for (const w of p.waits) this.observer.linkWaits(id, w);
    for (const [, ws] of grouped(p.waits, (w) => `${w.peer}\0${w.state}\0${w.why}`)) {
      const w = ws[0] as (typeof ws)[number];
      const fields = {
        pod: id,
        peer: w.peer,
        why: w.why,
        links: ws.length,
        first: ws.slice(0, LOG_LINKS).map((x) => x.link),
      };
      if (w.state === "waiting") this.log.info("link waits", fields);
      else this.log.warn(w.state === "refused" ? "link refused" : "link in conflict: it waits", fields);
    }
    // A veth needs the peer's netns, which only this node's own calls can tell, and which must
    // still be there (a sandbox whose DEL never reached the agent leaves its entry behind).
    const unplaced = new Set<string>();
    const gone = new Set<string>();
    const builds: Build[] = p.builds.filter((b) => {
      if (b.kind === "vxlan") return true;
      const peerAt = this.place(podId(b.peer), b.peer.containerId);
      if (peerAt && existsSync(peerAt.netns)) return true;
      (peerAt ? gone : unplaced).add(podId(b.peer));
      return false;
    });
    for (const peer of gone) this.log.info("link waits: its peer's netns is gone", { pod: id, peer });
    for (const peer of unplaced) {
      this.log.warn("link waits: its peer is registered on this node but this agent never attached it", {
        pod: id,
        peer,
      });
    }
    this.state.addLinks(env.containerId, Object.fromEntries(p.ifnames));

    // Round trip 2: record what we build (skipped when there is nothing to record).
    const { committed } = await this.store.commit(endpoint, reg, builds, p.stale);

    // Now the kernel: our ends (and, on one node, both ends of the veth). All or nothing.
    let out: AttachedInterface[];
    try {
      out = this.buildCommitted(id, me, committed);
    } catch (err) {
      this.observer.linkFailed(id, err);
      forget();
      // Chunks holding links built before this call stay: those links are still there.
      const mine = committed.filter((c) => c.links.every((l) => !l.build.update));
      await this.store.abandon(endpoint, mine).catch((e: unknown) =>
        this.log.warn("could not take back the records of a failed ADD", {
          pod: id,
          error: (e as Error).message,
        }),
      );
      if (!opts.live) await this.store.unregister(endpoint, reg.rev, declared).catch(() => undefined);
      // What the kernel holds now for the pod's ends, and why it differs from the declaration.
      if (opts.live) await recordObserved(this, id, (err as Error).message);
      throw err;
    }
    this.state.flush();
    if (p.removals.length > 0) {
      const kept = new Set(committed.map((c) => podId(c.peer)));
      await removeLinks(this, id, me, p.removals, reg.built, kept);
    }
    // What the kernel holds is reported in the background, once the answer is on its way:
    // reading the netns back is not the ADD's work.
    setImmediate(() => void recordObserved(this, id));
    return out;
  }

  /** Builds what a commit recorded: veths in one batch, then tunnel ends in one batch. */
  private buildCommitted(id: string, me: Place, committed: Committed[]): AttachedInterface[] {
    const veths: Array<{ job: VethJob; c: Committed; build: Build }> = [];
    const tunnels: Array<{ c: Committed; build: Build; vni: number }> = [];
    for (const c of committed) {
      for (const { build, vni } of c.links) {
        const { mine, theirs } = sides(build.link, id);
        if (c.kind === "veth") {
          const peer = this.place(podId(c.peer), c.peer.containerId) as Place;
          veths.push({
            job: {
              link: build.link.key,
              mtu: build.link.mtu,
              state: build.link.state,
              mine,
              me,
              theirs,
              peer,
            },
            c,
            build,
          });
        } else tunnels.push({ c, build, vni: vni as number });
      }
    }
    const started = performance.now();
    const builtVeths = buildVeths(veths.map((v) => v.job));
    const ends = buildTunnelEnds(
      tunnels.map((t) => ({
        link: t.build.link.key,
        end: sides(t.build.link, id).mine,
        at: me,
        tunnel: this.tunnel(t.vni, t.c.peer.vtep as string, {
          mtu: t.build.link.mtu,
          state: t.build.link.state,
        }),
        fresh: !t.build.update,
      })),
    );
    const failed = ends.find((e): e is Error => e instanceof Error);
    if (failed) {
      // What this call made; ends built before it (changed in place) stay.
      const made = [
        ...veths.filter((v) => !v.build.update).map((v) => v.job),
        ...tunnels
          .filter((t) => !t.build.update)
          .map((t) => ({ link: t.build.link.key, mine: sides(t.build.link, id).mine })),
      ];
      removeEnds(
        me,
        made.map((m) => ({ link: m.link, ifname: m.mine.ifname })),
        this.log,
      );
      throw failed;
    }
    // The peers' containers now hold their ends of the veths.
    for (const [containerId, vs] of grouped(veths, (v) => v.c.peer.containerId)) {
      this.state.addLinks(containerId, Object.fromEntries(vs.map((v) => [v.job.link, v.job.theirs.ifname])));
    }
    const built = [...builtVeths, ...ends] as BuiltEnd[];
    const all = [...veths, ...tunnels];
    const seconds = (performance.now() - started) / 1000 / Math.max(1, all.length);
    all.forEach((x, i) => {
      const b = built[i] as BuiltEnd;
      if (b.changed?.length)
        this.log.info("link changed", { link: x.build.link.key, pod: id, changed: b.changed });
      if (x.build.update) return;
      const { mine, theirs } = sides(x.build.link, id);
      this.observer.linkBuilt({
        link: x.build.link.key,
        kind: x.c.kind,
        pod: id,
        ifname: mine.ifname,
        peer: podId(x.c.peer),
        peerIfname: theirs.ifname,
        both: x.c.kind === "veth",
        seconds,
      });
    });
    for (const [peer, list] of grouped(
      all.filter((x) => !x.build.update),
      (x) => podId(x.c.peer),
    )) {
      this.log.info("links built", {
        pod: id,
        peer,
        kind: list[0]?.c.kind,
        links: list.length,
        first: list.slice(0, LOG_LINKS).map((x) => x.build.link.key),
      });
    }
    return [
      ...builtVeths.map((b, i) => ({ iface: b, ips: (veths[i] as (typeof veths)[number]).job.mine.ips })),
      ...ends.map((b, i) => ({
        iface: b as BuiltEnd,
        ips: sides((tunnels[i] as (typeof tunnels)[number]).build.link, id).mine.ips,
      })),
    ];
  }
}
