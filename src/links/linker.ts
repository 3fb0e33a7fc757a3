// Links pods (see attach.ts for ADD): the tunnel ends other nodes ask this node to build,
// reconcile at start, DEL, CHECK and GC. Every kernel change goes through the builder in
// batches, and the node-local state is saved once per operation.
import { CniError, Code, StoreUnavailableError } from "../cni/errors.ts";
import { type Impairment, listRootQdiscs, NetnsNotFoundError, sameImpairment } from "../netlink/index.ts";
import { type TunnelChunk, tunnelEnds } from "../store/records.ts";
import { LinkerBase, podOf, type Call } from "./attach.ts";
import {
  buildTunnelEnds,
  inspect,
  type NetnsView,
  type Place,
  presenceIn,
  removeEnds,
  type TunnelJob,
} from "./builder.ts";
import { fromImpairment, toImpairment } from "./impair.ts";
import { recordObserved } from "./observed.ts";
import { linkOf } from "./planner.ts";
import { podId, sides } from "./spec.ts";

export { findVtep, nodeSettings, type NodeSettings } from "./attach.ts";

/** The two pods of a link key. */
const podsOf = (key: string) => key.split(":").map((e) => e.split("/").slice(0, 2).join("/"));

export class Linker extends LinkerBase {
  // ---- the other node built tunnels to our pods --------------------------------------

  /**
   * Makes the local ends of tunnel chunks match them. Acts only for containers this agent
   * attached (their netns from our own calls), never on a pod's CNI_IFNAME, and only on
   * interfaces that are absent or carry the link's mark. `fresh`: rebuild ends that are
   * right already (the other side was just rebuilt). Returns how many ends are in place.
   */
  ensureTunnels(chunks: TunnelChunk[], fresh: boolean): number {
    const jobs: Array<TunnelJob & { containerId: string }> = [];
    const names = new Map<string, Map<string, string>>(); // container -> ifname -> link
    for (const t of chunks) {
      const c = this.state.get(t.containerId);
      if (!c || c.pod !== t.pod) continue; // not a container of ours (gone, or never here)
      const at: Place = { pod: t.pod, netns: c.netns };
      let byName = names.get(t.containerId);
      if (!byName) {
        byName = new Map(Object.entries(c.links).map(([k, ifname]) => [ifname, k]));
        names.set(t.containerId, byName);
      }
      for (const e of tunnelEnds(t)) {
        if (e.end.ifname === c.ifname) {
          this.log.error("tunnel end refused: it names the pod's CNI_IFNAME", { link: e.key, pod: t.pod });
          continue;
        }
        const taken = byName.get(e.end.ifname);
        if (taken !== undefined && taken !== e.key) {
          this.log.error("tunnel end refused: the pod uses that name for another link", {
            link: e.key,
            other: taken,
          });
          continue;
        }
        jobs.push({
          link: e.key,
          end: e.end,
          at,
          tunnel: this.tunnel(e.vni, e.remote, { mtu: e.mtu, state: e.state }),
          // An entry marked fresh: the other node (re)built its side just now, so ours is
          // rebuilt too (fresh neighbours); otherwise only the link's properties changed.
          fresh: fresh && (e.fresh ?? true),
          containerId: t.containerId,
        });
      }
    }
    const started = performance.now();
    const results = buildTunnelEnds(jobs);
    const seconds = (performance.now() - started) / 1000 / Math.max(1, jobs.length);
    let built = 0;
    const touched = new Set<string>();
    results.forEach((r, i) => {
      const j = jobs[i] as (typeof jobs)[number];
      if (r instanceof Error) {
        this.observer.linkFailed(j.at.pod, r, j.link);
        this.log.error("could not build a tunnel end", { link: j.link, pod: j.at.pod, error: r.message });
        return;
      }
      built++;
      touched.add(j.at.pod);
      this.state.addLinks(j.containerId, { [j.link]: j.end.ifname });
      if (r.changed?.length)
        this.log.info("link changed", { link: j.link, pod: j.at.pod, changed: r.changed });
      const other = j.link.split(":").find((e) => e !== `${j.at.pod}/${j.end.ifname}`) ?? "";
      this.observer.linkBuilt({
        link: j.link,
        kind: "vxlan",
        pod: j.at.pod,
        ifname: j.end.ifname,
        peer: other.slice(0, other.lastIndexOf("/")),
        peerIfname: other.slice(other.lastIndexOf("/") + 1),
        both: false,
        seconds,
      });
    });
    this.state.flush();
    for (const pod of touched) void recordObserved(this, pod);
    if (built > 0)
      this.log.info("tunnel ends in place for peers on another node", {
        ends: built,
        fresh,
        first: jobs.slice(0, 8).map((j) => j.link),
      });
    return built;
  }

  /**
   * A tunnel entry went away: the ends of its links (`prev`: the entry as it was; without
   * it, every link of the pair) whose link is no longer recorded as built are removed.
   */
  async dropTunnels(pair: { a: string; b: string }, prev: TunnelChunk | undefined): Promise<void> {
    const local = [...this.state.entries()].filter(([, c]) => c.pod === pair.a || c.pod === pair.b);
    const candidates = local.flatMap(([containerId, c]) =>
      Object.entries(c.links)
        .filter(([k]) =>
          prev ? prev.ends.some((e) => e.key === k) : podsOf(k).sort().join(" ") === `${pair.a} ${pair.b}`,
        )
        .map(([link, ifname]) => ({ containerId, at: { pod: c.pod, netns: c.netns }, link, ifname })),
    );
    if (candidates.length === 0) return;
    const recorded = await this.store.recordedLinks(pair.a, pair.b);
    const gone = candidates.filter((x) => !recorded.has(x.link));
    for (const [containerId, list] of groupBy(gone, (x) => x.containerId)) {
      const at = (list[0] as (typeof list)[number]).at;
      const r = removeEnds(at, list, this.log);
      for (const f of r.failures) this.log.warn("could not remove a tunnel end", { pod: at.pod, error: f });
      for (const x of r.removed) this.observer.linkRemoved(at.pod, x.link);
      this.state.dropLinks(
        containerId,
        r.removed.map((x) => x.link),
      );
      if (r.removed.length > 0)
        this.log.info("removed the ends of links that are gone", { pod: at.pod, ends: r.removed.length });
    }
    this.state.flush();
    for (const pod of new Set(gone.map((x) => x.at.pod))) await recordObserved(this, pod);
  }

  /** At start (and after a watch was lost): every tunnel end of this node in place. */
  async reconcile(): Promise<{ revision: string; ends: number; entries: number }> {
    const { tunnels, revision } = await this.store.nodeIndex(this.node);
    const ends = this.ensureTunnels(tunnels, false);
    return { revision, ends, entries: tunnels.length };
  }

  // ---- DEL -------------------------------------------------------------------------------

  /**
   * The kernel's half of a DEL of a container this agent attached: its link ends go (a veth
   * takes its peer's end along) and the container leaves the node state, without a word to
   * etcd. Returns the links it dealt with (detach, run after it for the records, skips them);
   * undefined when this agent did not attach the container. Throws when an end could not be
   * removed: the state stays, so the runtime's retry finds them.
   */
  detachLocal(env: Call): Record<string, string> | undefined {
    if (!env.pod) return undefined;
    const id = podOf(env);
    const local = this.place(id, env.containerId) ? this.state.get(env.containerId) : undefined;
    if (!local) return undefined;
    const netns = env.netns || local.netns;
    if (netns) this.removeOwnEnds({ pod: id, netns }, new Map(Object.entries(local.links)));
    this.state.delete(env.containerId);
    this.state.flush();
    return local.links;
  }

  /** A DEL's removal of the pod's ends (a veth takes its peer's along); throws when one stays. */
  private removeOwnEnds(at: Place, links: Map<string, string>): void {
    if (links.size === 0) return;
    const r = removeEnds(
      at,
      [...links].map(([link, ifname]) => ({ link, ifname })),
      this.log,
    );
    if (r.removed.length > 0) this.log.info("removed link ends", { pod: at.pod, ends: r.removed.length });
    for (const k of links.keys())
      this.observer.linkRemoved(at.pod, k, podsOf(k).find((p) => p !== at.pod) ?? at.pod);
    if (r.failures.length > 0) {
      throw new CniError(Code.Netlink, `DEL of pod ${at.pod}: could not remove ${r.failures.join("; ")}`);
    }
  }

  /**
   * Removes the container's link ends and, if its endpoint is still this container's, its
   * records. True when ratchet had attached it, undefined when it cannot tell. Fails when an
   * end could not be removed (the records stay, so a retry finds it). `former`: the links
   * the container had when detachLocal took it out of the node state.
   */
  async detach(env: Call, former?: Record<string, string>): Promise<boolean | undefined> {
    if (!env.pod) return false;
    const id = podOf(env);
    const local = this.place(id, env.containerId) ? this.state.get(env.containerId) : undefined;
    const at: Place = { pod: id, netns: env.netns || local?.netns || "" };
    const links = new Map<string, string>(Object.entries(local?.links ?? former ?? {}));
    let own: Awaited<ReturnType<Linker["store"]["own"]>> | undefined;
    let unreachable: unknown;
    // The pairs with the peers this node knows of are read alongside the pod's own records
    // (one round trip, not two): the removal below needs them.
    const known = [...new Set([...links.keys()].flatMap((k) => podsOf(k)).filter((p) => p !== id))];
    let pairs: Awaited<ReturnType<Linker["store"]["pairs"]>> | undefined;
    try {
      [own, pairs] = await Promise.all([
        this.store.own(id),
        known.length > 0 ? this.store.pairs(id, known).catch(() => undefined) : undefined,
      ]);
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err;
      unreachable = err;
    }
    const ours = own?.endpoint !== undefined && own.endpoint.containerId === env.containerId;
    if (own) {
      for (const [k, decls] of groupBy(own.decls, (d) => d.link)) {
        if (!links.has(k)) links.set(k, sides(linkOf(k, decls), id).mine.ifname);
      }
    }
    // Local first: our ends go now, whatever happens to the records.
    if (at.netns && (local || ours)) this.removeOwnEnds(at, links);
    if (unreachable) throw unreachable;
    if (ours && own?.endpoint) {
      const peers = new Set(own.peers);
      for (const k of links.keys()) for (const p of podsOf(k)) if (p !== id) peers.add(p);
      const declaredTo = new Set(own.decls.filter((d) => d.declarer === id).map((d) => podId(d.spec.peer)));
      // Our ends' reports go in the same transaction as the endpoint.
      await this.store.removeRecords(own.endpoint, own.rev, peers, declaredTo, pairs);
    }
    if (local) {
      this.state.delete(env.containerId);
      this.state.flush();
    }
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
    const links = [...groupBy(own.decls, (d) => d.link)].map(([k, decls]) => linkOf(k, decls));
    const peers = await this.store.endpoints([...new Set(links.map((l) => podId(sides(l, id).theirs)))]);
    let view: NetnsView | undefined;
    let roots = new Map<number, Impairment | undefined>();
    try {
      view = inspect(env.netns);
      roots = new Map(listRootQdiscs(env.netns).map((q) => [q.ifindex, q.impairment]));
    } catch (err) {
      if (!(err instanceof NetnsNotFoundError)) throw err;
    }
    const problems: string[] = [];
    for (const link of links) {
      const { mine, theirs } = sides(link, id);
      if (!peers.has(podId(theirs))) continue; // the peer is not there yet: nothing to check
      const p = view ? presenceIn(view, link.key, mine.ifname) : { state: "absent" as const };
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
      const impairment = roots.get(l.index);
      if (!sameImpairment(impairment, toImpairment(mine.netem))) {
        const have = JSON.stringify(fromImpairment(impairment));
        problems.push(`netem of ${mine.ifname} is ${have}, declared ${JSON.stringify(mine.netem ?? {})}`);
      }
      if (link.mtu !== undefined && l.mtu !== link.mtu)
        problems.push(`${mine.ifname} has MTU ${l.mtu}, expected ${link.mtu}`);
      const have = (view?.addrs.get(l.index) ?? []).map((a) => `${a.address}/${a.prefixLength}`);
      for (const ip of mine.ips) if (!have.includes(ip)) problems.push(`${mine.ifname} lacks address ${ip}`);
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
}

function groupBy<T>(items: T[], key: (x: T) => string): Map<string, T[]> {
  const out = new Map<string, T[]>();
  for (const x of items) {
    const k = key(x);
    const list = out.get(k);
    if (list) list.push(x);
    else out.set(k, [x]);
  }
  return out;
}
