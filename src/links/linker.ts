// Links pods: registers endpoints in etcd, builds veth pairs (same node) and VXLAN ends
// (across nodes), completes links whose peer comes later, and undoes them on DEL.
//
// Who builds a link: the pod whose registration sees the peer already registered. Each
// registration is one etcd transaction that writes the endpoint and reads the peers, and
// etcd orders transactions, so of two pods starting together exactly one sees the other:
// never both (no EEXIST), never neither (no lost link).
//
// What it trusts: netns paths only from this node's own CNI calls (NodeState); values from
// etcd only after the store's schema checks; interfaces only when they carry the link's mark.
import { existsSync } from "node:fs";
import type { NetConf } from "../cni/config.ts";
import type { CniEnv } from "../cni/env.ts";
import { CniError, Code, StoreUnavailableError } from "../cni/errors.ts";
import { show } from "../cni/names.ts";
import type { AttachedInterface } from "../cni/result.ts";
import type { Logger } from "../log.ts";
import { type LinkObserver, quietObserver } from "../observe/link-observer.ts";
import {
  firstIpv4Address,
  getLink,
  getRootQdisc,
  LinkNotFoundError,
  listAddresses,
  sameImpairment,
} from "../netlink/index.ts";
import type { LinkStore } from "../store/link-store.ts";
import type { EndpointRecord, Observed, TunnelEnd } from "../store/records.ts";
import {
  buildTunnelEnd,
  buildVeth,
  converge,
  type EndProps,
  type Place,
  presence,
  removeEnd,
  type TunnelSpec,
} from "./builder.ts";
import type { NodeState } from "./node-state.ts";
import { fromImpairment, toImpairment } from "./impair.ts";
import { type Build, linkOf, type Plan, plan } from "./planner.ts";
import { endId, type LinkSpec, podId, sides } from "./spec.ts";

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

type Call = Omit<CniEnv, "args">;

function podOf(env: Call): string {
  if (!env.pod) throw new CniError(Code.Internal, "a link call without K8S_POD_NAMESPACE and K8S_POD_NAME");
  return podId({ namespace: env.pod.namespace, pod: env.pod.name });
}

export class Linker {
  private identity: { node: string; vtep: string | undefined } | undefined;
  /** Hears of links built, waiting, failed, removed (Events, metrics, network-status). */
  observer: LinkObserver = quietObserver;

  constructor(
    readonly store: LinkStore,
    readonly settings: NodeSettings,
    readonly state: NodeState,
    private readonly log: Logger,
  ) {}

  /** This node: its VTEP address when it has one, else its Kubernetes node name. */
  get node(): string {
    return this.whoAmI().node;
  }

  get vtep(): string | undefined {
    return this.whoAmI().vtep;
  }

  private whoAmI(): { node: string; vtep: string | undefined } {
    if (!this.identity) {
      const vtep = findVtep(this.settings);
      this.identity = { node: vtep ?? this.settings.nodeName, vtep };
    }
    return this.identity;
  }

  /** Where pod `id`'s container `containerId` lives on this node, from our own CNI calls. */
  private place(id: string, containerId: string): Place | undefined {
    const c = this.state.get(containerId);
    return c && c.pod === id ? { pod: id, netns: c.netns } : undefined;
  }

  // ---- ADD ---------------------------------------------------------------------------

  /**
   * Registers the container and makes its links match `declared`: builds what is missing,
   * changes in place what exists, removes what no pod declares any more. `live`: a change to
   * a running pod (not an ADD): a failure undoes only what this call built.
   */
  async attach(env: Call, declared: LinkSpec[], opts: { live?: boolean } = {}): Promise<AttachedInterface[]> {
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
    if (!this.state.get(env.containerId)) {
      this.state.set(env.containerId, { pod: id, netns: env.netns, ifname: env.ifname, links: {} });
    }
    const forget = () => {
      if (!opts.live) this.state.delete(env.containerId);
    };
    // Round trip 1: register and read.
    let reg: Awaited<ReturnType<LinkStore["register"]>>;
    try {
      reg = await this.store.register(endpoint, declared);
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
    for (const w of p.waits) {
      const fields = { link: w.link, pod: id, peer: w.peer, why: w.why };
      this.observer.linkWaits(id, w);
      if (w.state === "waiting") this.log.info("link waits", fields);
      else this.log.warn(w.state === "refused" ? "link refused" : "link in conflict: it waits", fields);
    }
    // A veth needs the peer's netns, which only this node's own calls can tell, and which must
    // still be there (a sandbox whose DEL never reached the agent leaves its entry behind).
    const builds: Build[] = p.builds.filter((b) => {
      if (b.kind === "vxlan") return true;
      const peerAt = this.place(podId(b.peer), b.peer.containerId);
      if (peerAt && existsSync(peerAt.netns)) return true;
      if (peerAt) {
        this.log.info("link waits: its peer's netns is gone", {
          link: b.link.key,
          pod: id,
          peer: podId(b.peer),
        });
        return false;
      }
      this.log.warn("link waits: its peer is registered on this node but this agent never attached it", {
        link: b.link.key,
        pod: id,
        peer: podId(b.peer),
      });
      return false;
    });
    this.state.set(env.containerId, {
      pod: id,
      netns: env.netns,
      ifname: env.ifname,
      // Keep what a peer's ADD built into this container meanwhile.
      links: { ...this.state.get(env.containerId)?.links, ...Object.fromEntries(p.ifnames) },
    });

    // Round trip 2: record what we build (skipped when there is nothing to record).
    const stillPeers = new Set(declared.map((l) => podId(l.peer)));
    const { committed, revision } = await this.store.commit(
      endpoint,
      reg.rev,
      builds,
      reg.vniNext,
      p.stale,
      stillPeers,
    );

    // Now the kernel: our ends (and, on one node, both ends of the veth). All or nothing.
    const out: AttachedInterface[] = [];
    const done: Array<{ link: string; ifname: string }> = [];
    try {
      for (const c of committed) {
        const started = performance.now();
        const { mine, theirs } = sides(c.record, id);
        const peerId = podId(c.peer);
        const props = { mtu: c.record.mtu, state: c.record.state };
        let built: { name: string; mac: string; sandbox: string };
        if (c.record.kind === "veth") {
          const peer = this.place(peerId, c.peer.containerId) as Place;
          const inPlace =
            c.update &&
            presence(c.record.key, mine.ifname, me.netns).state === "ours" &&
            presence(c.record.key, theirs.ifname, peer.netns).state === "ours";
          if (inPlace) {
            const changed = [
              ...converge(c.record.key, mine, me, props),
              ...converge(c.record.key, theirs, peer, props),
            ];
            if (changed.length > 0) this.log.info("link changed", { link: c.record.key, pod: id, changed });
            const l = getLink(mine.ifname, me.netns);
            built = { name: mine.ifname, mac: l.mac, sandbox: me.netns };
          } else {
            built = buildVeth(c.record.key, props, mine, me, theirs, peer);
          }
          const pc = this.state.get(c.peer.containerId);
          if (pc)
            this.state.set(c.peer.containerId, {
              ...pc,
              links: { ...pc.links, [c.record.key]: theirs.ifname },
            });
        } else {
          built = buildTunnelEnd(
            c.record.key,
            mine,
            me,
            this.tunnel(c.record.vni as number, c.peer.vtep as string, props),
            !c.update,
          );
        }
        if (c.update) {
          out.push({ iface: built, ips: mine.ips });
          continue; // not ours to take back on a failure: it was there before this call
        }
        done.push({ link: c.record.key, ifname: mine.ifname });
        this.log.info("link built", {
          link: c.record.key,
          kind: c.record.kind,
          vni: c.record.vni,
          pod: id,
          peer: peerId,
        });
        this.observer.linkBuilt({
          link: c.record.key,
          kind: c.record.kind,
          pod: id,
          ifname: mine.ifname,
          peer: peerId,
          peerIfname: theirs.ifname,
          both: c.record.kind === "veth",
          seconds: (performance.now() - started) / 1000,
        });
        out.push({ iface: built, ips: mine.ips });
      }
    } catch (err) {
      this.observer.linkFailed(id, err);
      for (const d of done) removeEnd(d.link, d.ifname, me, this.log);
      forget();
      await this.store
        .abandon(
          committed.filter((c) => !c.update),
          revision,
        )
        .catch((e: unknown) =>
          this.log.warn("could not take back the records of a failed ADD", {
            pod: id,
            error: (e as Error).message,
          }),
        );
      if (!opts.live) await this.store.unregister(endpoint, revision, declared).catch(() => undefined);
      // What the kernel holds now for the pod's ends, and why it differs from the declaration.
      if (opts.live) await this.recordObserved(id, (err as Error).message);
      throw err;
    }
    if (p.removals.length > 0) await this.remove(id, me, p.removals);
    await this.recordObserved(id);
    return out;
  }

  /**
   * Writes what the kernel holds for every end on this node of pod `id`'s links (and, for a
   * veth, its peer's end), for `ratchet links`; `error` says why it may differ from the
   * declaration. Never fails the caller.
   */
  async recordObserved(id: string, error?: string): Promise<void> {
    const found = this.state.containerOf(id);
    if (!found) return;
    const [, c] = found;
    const entries: Parameters<LinkStore["writeObserved"]>[0] = [];
    const since = new Date().toISOString();
    const read = (link: string, ifname: string, netns: string): Observed => {
      const p = presence(link, ifname, netns);
      const base = { node: this.node, ifname, since, netem: {}, ...(error ? { error } : {}) };
      if (p.state !== "ours") return { ...base, present: false, up: false, carrier: false, mtu: 0 };
      const qdisc = getRootQdisc(ifname, netns)?.impairment;
      const l = p.link;
      return {
        ...base,
        present: true,
        up: l.up,
        carrier: l.carrier,
        mtu: l.mtu,
        netem: fromImpairment(qdisc),
      };
    };
    try {
      for (const [link, ifname] of Object.entries(c.links)) {
        entries.push({ link, id, observed: read(link, ifname, c.netns) });
        // The other end, when it is a container of this node too (a veth).
        for (const [, o] of this.state.entries()) {
          if (o.pod !== id && o.links[link]) {
            entries.push({ link, id: o.pod, observed: read(link, o.links[link] as string, o.netns) });
          }
        }
      }
      await this.store.writeObserved(entries);
    } catch (err) {
      this.log.warn("could not record what the kernel holds", { pod: id, error: (err as Error).message });
    }
  }

  /** Links no pod declares any more: this pod's ends go (a veth takes the peer's), then the records. */
  private async remove(id: string, me: Place, gone: Plan["removals"]): Promise<void> {
    for (const r of gone) {
      if (removeEnd(r.link, r.ifname, me, this.log)) this.log.info("link removed", { link: r.link, pod: id });
      this.observer.linkRemoved(id, r.link, r.peer);
      for (const [cid, c] of [...this.state.entries()]) {
        if (!(r.link in c.links) || (c.pod !== id && c.pod !== r.peer)) continue;
        const { [r.link]: _, ...links } = c.links;
        this.state.set(cid, { ...c, links });
      }
    }
    await this.store.dropLinks(id, gone);
    // Last: a report of these ends written meanwhile (the peer's ADD) is gone with them.
    const unobserved = gone.flatMap((r) => [
      { link: r.link, id, observed: undefined },
      { link: r.link, id: r.peer, observed: undefined },
    ]);
    await this.store.writeObserved(unobserved).catch(() => undefined);
  }

  private tunnel(vni: number, remote: string, props: EndProps): TunnelSpec {
    return {
      vni,
      remote,
      ...props,
      underlay: this.settings.parentInterface,
      hostNetns: this.settings.hostNetns,
    };
  }

  // ---- the other node built a tunnel to one of our pods -------------------------------

  /**
   * Makes the local end of a VXLAN link match its node entry. Acts only for a container this
   * agent attached (its netns from our own calls), never on the pod's CNI_IFNAME, and only on
   * interfaces that are absent or carry the link's mark.
   */
  ensureTunnelEnd(nl: TunnelEnd, fresh = false): void {
    const id = podId(nl.end);
    const c = this.state.get(nl.containerId);
    if (!c || c.pod !== id) return; // not a container of ours (gone, or never here)
    if (nl.end.ifname === c.ifname) {
      this.log.error("tunnel end refused: it names the pod's CNI_IFNAME", { link: nl.key, pod: id });
      return;
    }
    const taken = Object.entries(c.links).find(([k, ifname]) => ifname === nl.end.ifname && k !== nl.key);
    if (taken) {
      this.log.error("tunnel end refused: the pod uses that name for another link", {
        link: nl.key,
        other: taken[0],
      });
      return;
    }
    const started = performance.now();
    buildTunnelEnd(
      nl.key,
      nl.end,
      { pod: id, netns: c.netns },
      this.tunnel(nl.vni, nl.remote, { mtu: nl.mtu, state: nl.state }),
      fresh,
    );
    if (c.links[nl.key] !== nl.end.ifname)
      this.state.set(nl.containerId, { ...c, links: { ...c.links, [nl.key]: nl.end.ifname } });
    this.log.info("tunnel end built for a peer on another node", { link: nl.key, vni: nl.vni, pod: id });
    void this.recordObserved(id);
    const other = nl.key.split(":").find((e) => e !== endId(nl.end)) ?? "";
    this.observer.linkBuilt({
      link: nl.key,
      kind: "vxlan",
      pod: id,
      ifname: nl.end.ifname,
      peer: other.slice(0, other.lastIndexOf("/")),
      peerIfname: other.slice(other.lastIndexOf("/") + 1),
      both: false,
      seconds: (performance.now() - started) / 1000,
    });
  }

  /** A node entry went away: if the link is gone, remove our marked end of it. */
  async dropTunnelEnd(key: string): Promise<void> {
    const pods = key.split(":").map((e) => e.split("/").slice(0, 2).join("/"));
    const local = [...this.state.entries()].filter(([, c]) => pods.includes(c.pod) && c.links[key]);
    if (local.length === 0) return;
    if (await this.store.linkRecord(key)) return;
    for (const [, c] of local) {
      if (removeEnd(key, c.links[key] as string, { pod: c.pod, netns: c.netns }, this.log)) {
        this.log.info("removed the end of a link that is gone", { link: key, pod: c.pod });
        this.observer.linkRemoved(c.pod, key);
      }
    }
  }

  /** At start: every tunnel end of this node built. */
  async reconcile(): Promise<number> {
    const { tunnelEnds } = await this.store.nodeIndex(this.node);
    let fixed = 0;
    for (const nl of tunnelEnds) {
      try {
        this.ensureTunnelEnd(nl);
        fixed++;
      } catch (err) {
        this.observer.linkFailed(podId(nl.end), err, nl.key);
        this.log.warn("could not build a tunnel end at start", {
          link: nl.key,
          error: (err as Error).message,
        });
      }
    }
    return fixed;
  }

  // ---- DEL -------------------------------------------------------------------------------

  /**
   * Removes the container's link ends and, if its endpoint is still this container's, its
   * records. True when ratchet had attached it, undefined when it cannot tell. Fails when an
   * end could not be removed (the records stay, so a retry finds it).
   */
  async detach(env: Call): Promise<boolean | undefined> {
    if (!env.pod) return false;
    const id = podOf(env);
    const local = this.place(id, env.containerId) ? this.state.get(env.containerId) : undefined;
    const at: Place = { pod: id, netns: env.netns || local?.netns || "" };
    const links = new Map<string, { ifname: string; peer: string }>();
    for (const [k, ifname] of Object.entries(local?.links ?? {})) {
      links.set(k, {
        ifname,
        peer:
          k
            .split(":")
            .map((e) => e.split("/").slice(0, 2).join("/"))
            .find((p) => p !== id) ?? id,
      });
    }
    let own: Awaited<ReturnType<LinkStore["own"]>> | undefined;
    let unreachable: unknown;
    try {
      own = await this.store.own(id);
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err;
      unreachable = err;
    }
    const ours = own?.endpoint !== undefined && own.endpoint.containerId === env.containerId;
    if (own) {
      const byLink = new Map<string, typeof own.decls>();
      for (const d of own.decls) byLink.set(d.link, [...(byLink.get(d.link) ?? []), d]);
      for (const [k, decls] of byLink) {
        const { mine, theirs } = sides(linkOf(k, decls), id);
        if (!links.has(k)) links.set(k, { ifname: mine.ifname, peer: podId(theirs) });
      }
    }
    // Local first: our ends go now, whatever happens to the records.
    const failures: string[] = [];
    if (at.netns && (local || ours)) {
      for (const [k, l] of links) {
        try {
          if (removeEnd(k, l.ifname, at, this.log))
            this.log.info("removed link end", { link: k, pod: id, ifname: l.ifname });
          this.observer.linkRemoved(id, k, l.peer);
        } catch (err) {
          failures.push(`${l.ifname} (link ${k}): ${(err as Error).message}`);
        }
      }
    }
    if (failures.length > 0) {
      throw new CniError(Code.Netlink, `DEL of pod ${id}: could not remove ${failures.join("; ")}`);
    }
    if (unreachable) throw unreachable;
    if (ours && own?.endpoint) {
      await this.store.removeRecords(own.endpoint, own.rev, new Map([...links].map(([k, l]) => [k, l.peer])));
      // Our ends, and the other ends on this node (a veth goes whole).
      const gone = [...links.keys()].flatMap((link) => [
        { link, id, observed: undefined },
        ...[...this.state.entries()]
          .filter(([cid, o]) => cid !== env.containerId && o.links[link])
          .map(([, o]) => ({ link, id: o.pod, observed: undefined })),
      ]);
      await this.store.writeObserved(gone).catch(() => undefined);
    }
    if (local) this.state.delete(env.containerId);
    if (ours || local) return true;
    return undefined; // not this container's endpoint: whether ratchet had it is for the caller
  }

  // ---- CHECK -------------------------------------------------------------------------

  async check(env: Call): Promise<void> {
    const id = podOf(env);
    const own = await this.store.own(id);
    if (!own.endpoint || own.endpoint.containerId !== env.containerId) {
      throw new CniError(
        Code.CheckFailed,
        `CHECK: pod ${id} container ${env.containerId} is not registered with ratchet`,
      );
    }
    const byLink = new Map<string, typeof own.decls>();
    for (const d of own.decls) byLink.set(d.link, [...(byLink.get(d.link) ?? []), d]);
    const links = [...byLink].map(([k, decls]) => linkOf(k, decls));
    const peers = await this.store.endpoints([...new Set(links.map((l) => podId(sides(l, id).theirs)))]);
    const problems: string[] = [];
    for (const link of links) {
      const { mine, theirs } = sides(link, id);
      if (!peers.has(podId(theirs))) continue; // the peer is not there yet: nothing to check
      const p = presence(link.key, mine.ifname, env.netns);
      if (p.state === "absent") {
        problems.push(`${mine.ifname} (link ${link.key}) is missing`);
        continue;
      }
      if (p.state === "foreign") {
        problems.push(`${mine.ifname} (link ${link.key}) is not the interface ratchet built`);
        continue;
      }
      const l = p.link;
      const want = link.state ?? "up";
      if (l.up !== (want === "up"))
        problems.push(`state of ${mine.ifname} is ${l.up ? "up" : "down"}, declared ${want}`);
      const impairment = getRootQdisc(mine.ifname, env.netns)?.impairment;
      if (!sameImpairment(impairment, toImpairment(mine.netem))) {
        const have = JSON.stringify(fromImpairment(impairment));
        problems.push(`netem of ${mine.ifname} is ${have}, declared ${JSON.stringify(mine.netem ?? {})}`);
      }
      if (link.mtu !== undefined && l.mtu !== link.mtu)
        problems.push(`${mine.ifname} has MTU ${l.mtu}, expected ${link.mtu}`);
      try {
        const have = listAddresses(mine.ifname, env.netns).map((a) => `${a.address}/${a.prefixLength}`);
        for (const ip of mine.ips)
          if (!have.includes(ip)) problems.push(`${mine.ifname} lacks address ${ip}`);
      } catch (err) {
        if (!(err instanceof LinkNotFoundError)) throw err;
        problems.push(`${mine.ifname} (link ${link.key}) is missing`);
      }
    }
    if (problems.length > 0)
      throw new CniError(Code.CheckFailed, `CHECK of pod ${id}: ${problems.join("; ")}`);
  }

  // ---- GC ----------------------------------------------------------------------------

  /** Removes this node's attachments whose (container, ifname) is not a valid attachment. */
  async gc(valid: Array<{ containerID: string; ifname: string }>): Promise<number> {
    let removed = 0;
    for (const [containerId, c] of [...this.state.entries()]) {
      if (valid.some((v) => v.containerID === containerId && v.ifname === c.ifname)) continue;
      const [namespace, name] = c.pod.split("/") as [string, string];
      await this.detach({
        command: "DEL",
        containerId,
        netns: c.netns,
        ifname: c.ifname,
        path: [],
        pod: { namespace, name },
      });
      removed++;
      this.log.info("GC removed a stale attachment", { pod: c.pod, containerId });
    }
    return removed;
  }

  /** True while this node has ratchet pods: their links may need work (a peer may come). */
  get pendingWork(): boolean {
    return this.state.size > 0;
  }

  /** The kernel's view of one end, for `ratchet links` and metrics. */
  observe(link: string, ifname: string, netns: string): ReturnType<typeof getLink> | undefined {
    const p = presence(link, ifname, netns);
    return p.state === "ours" ? p.link : undefined;
  }
}
