// The kernel side of links: builds and removes link ends through src/netlink, and never
// changes an interface that does not carry ratchet's mark for that very link (ownership.ts):
// an interface of the wanted name without it belongs to someone else, and is left alone.
//
// Work comes in batches (a pod may have thousands of links): each netns involved is read
// once (one dump of its links, one of its addresses), and the changes go out through
// src/netlink/bulk.ts, many requests per sendmsg, one socket (one netns switch) per netns.
// What is already right is left as it is, or changed in place (converge.ts).
import { CniError, Code } from "../cni/errors.ts";
import { show } from "../cni/names.ts";
import type { Logger } from "../log.ts";
import {
  createVethPairs,
  createVxlans,
  deleteIndexes,
  dumpLinks,
  NetnsSockets,
  type NewEnd,
  randomMac,
} from "../netlink/bulk.ts";
import {
  Errno,
  type Impairment,
  type Link as KernelLink,
  listRootQdiscs,
  NetlinkError,
  NetnsNotFoundError,
  sameImpairment,
} from "../netlink/index.ts";
import { converge, type EndProps } from "./converge.ts";
import { toImpairment } from "./impair.ts";
import type { EndSpec } from "./spec.ts";

export { converge, type EndProps } from "./converge.ts";

import {
  classify,
  groupOf,
  markOf,
  marked,
  type NetnsView,
  notOurs,
  type Place,
  Views,
} from "./ownership.ts";

export {
  groupOf,
  inspect,
  markOf,
  type NetnsView,
  type Place,
  type Presence,
  presence,
  presenceIn,
} from "./ownership.ts";

/** The root qdisc's impairment of a link of a view (one dump per netns, at first use). */
function rootOf(v: NetnsView, index: number): Impairment | undefined {
  v.roots ??= new Map(listRootQdiscs(v.netns).map((q) => [q.ifindex, q.impairment]));
  return v.roots.get(index);
}

/** Is an end of ours already what `end` and `props` declare (MTU, state, addresses, qdisc)? */
function settled(v: NetnsView, l: KernelLink, end: EndSpec, props: EndProps): boolean {
  if (props.mtu !== undefined && l.mtu !== props.mtu) return false;
  if (l.up !== ((props.state ?? "up") === "up")) return false;
  const have = (v.addrs.get(l.index) ?? []).filter((a) => a.scope !== "link");
  const text = new Set(have.map((a) => `${a.address}/${a.prefixLength}`));
  if (text.size !== end.ips.length || !end.ips.every((ip) => text.has(ip))) return false;
  return sameImpairment(rootOf(v, l.index), toImpairment(end.netem));
}

/** A new end is left down when it needs a qdisc first, or is declared down. */
const staysDown = (end: EndSpec, props: EndProps) =>
  props.state === "down" || toImpairment(end.netem) !== undefined;

export interface BuiltEnd {
  name: string;
  mac: string;
  sandbox: string;
  /** Kept and changed in place: what changed (absent: created). */
  changed?: string[];
}

export interface VethJob {
  link: string;
  mtu: number | undefined;
  state?: EndProps["state"];
  mine: EndSpec;
  me: Place;
  theirs: EndSpec;
  peer: Place;
}

/** Deletes links per netns (several in one kernel call); throws on any that stays. */
function deleteAll(socks: NetnsSockets, views: Views, doomed: Map<string, KernelLink[]>): void {
  for (const [netns, links] of doomed) {
    const errs = deleteIndexes(
      socks.socket(netns),
      links.map((l) => l.index),
      views.get(netns).all,
    );
    const i = errs.findIndex((e) => e !== undefined);
    if (i >= 0) {
      const l = links[i] as KernelLink;
      throw new NetlinkError(
        `failed to delete ${show(l.name)} in netns ${show(netns)}: ${errs[i]?.message}`,
        {
          cause: errs[i],
        },
      );
    }
  }
}

function add<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const list = m.get(k);
  if (list) list.push(v);
  else m.set(k, [v]);
}

/**
 * How many times a build is made from a fresh read of its netns when the kernel refused a
 * create with EEXIST or EBUSY. The ifindexes asked for come from one read of each netns
 * (bulk.ts), and another program may create an interface there before ratchet's creates
 * arrive: the pod's boot network runs beside ratchet's links, and the node's other CNI calls
 * create host-side interfaces. The next attempt reads again, so it asks for free ifindexes,
 * and finds an interface of a wanted name that appeared meanwhile as foreign (left alone).
 */
const CREATE_ATTEMPTS = 3;

/** A create lost a race with another program's create (see CREATE_ATTEMPTS). */
function lostRace(err: unknown): boolean {
  return err instanceof NetlinkError && (err.errno === Errno.EEXIST || err.errno === Errno.EBUSY);
}

/**
 * Builds veth pairs between pods of this node, both ends marked, addressed and up; a pair
 * that is already right is kept. All or nothing: on any failure, what this call built is
 * removed again and the first error is thrown (before anything is built when an interface
 * of a wanted name is not ratchet's). A create that lost a race is tried again from a fresh
 * read. `afterRead` runs after the netns are read, before anything changes (tests race it).
 */
export function buildVeths(jobs: VethJob[], afterRead?: () => void): BuiltEnd[] {
  for (let attempt = 1; ; attempt++) {
    try {
      return buildVethsOnce(jobs, afterRead);
    } catch (err) {
      if (attempt >= CREATE_ATTEMPTS || !lostRace(err)) throw err;
    }
  }
}

function buildVethsOnce(jobs: VethJob[], afterRead: (() => void) | undefined): BuiltEnd[] {
  if (jobs.length === 0) return [];
  using socks = new NetnsSockets();
  const views = new Views(socks);
  const doomed = new Map<string, KernelLink[]>();
  const fresh: Array<{ job: number; a: NewEnd; b: NewEnd }> = [];
  const inPlace: number[] = [];
  const out: BuiltEnd[] = new Array(jobs.length);
  const props = (j: VethJob): EndProps => ({ mtu: j.mtu, state: j.state });
  jobs.forEach((j, n) => {
    const vm = views.get(j.me.netns);
    const vp = views.get(j.peer.netns);
    const pm = classify(j.link, vm.links.get(j.mine.ifname), j.me.netns);
    const pt = classify(j.link, vp.links.get(j.theirs.ifname), j.peer.netns);
    if (pm.state === "foreign") throw notOurs(j.link, j.mine.ifname, j.me, pm.link);
    if (pt.state === "foreign") throw notOurs(j.link, j.theirs.ifname, j.peer, pt.link);
    if (pm.state === "ours" && pt.state === "ours") {
      const [a, b] = [pm.link, pt.link];
      const right =
        marked(j.link, a) &&
        marked(j.link, b) &&
        a.kind === "veth" &&
        b.kind === "veth" &&
        a.peerIndex === b.index &&
        b.peerIndex === a.index &&
        (j.mine.mac === undefined || a.mac === j.mine.mac) &&
        (j.theirs.mac === undefined || b.mac === j.theirs.mac);
      if (right) {
        out[n] = { name: j.mine.ifname, mac: a.mac, sandbox: j.me.netns };
        // Changed in place: MTU, addresses, qdisc, state (also what a killed agent left).
        if (!settled(vm, a, j.mine, props(j)) || !settled(vp, b, j.theirs, props(j))) inPlace.push(n);
        return;
      }
    }
    if (pm.state === "ours") add(doomed, j.me.netns, pm.link);
    if (pt.state === "ours") add(doomed, j.peer.netns, pt.link);
    const mark = markOf(j.link);
    const end = (e: EndSpec, at: Place, v: NetnsView): NewEnd => ({
      name: e.ifname,
      ns: at.netns,
      index: v.alloc.take(),
      mac: e.mac ?? randomMac(),
      alias: mark,
      group: groupOf(at.netns),
      ips: e.ips,
      ...(j.mtu !== undefined ? { mtu: j.mtu } : {}),
      // A veth's ends come up together: both stay down when either needs finishing.
      ...(staysDown(j.mine, props(j)) || staysDown(j.theirs, props(j)) ? { down: true } : {}),
    });
    fresh.push({ job: n, a: end(j.mine, j.me, vm), b: end(j.theirs, j.peer, vp) });
  });
  for (const n of inPlace) {
    const j = jobs[n] as VethJob;
    const changed = [
      ...converge(j.link, j.mine, j.me, props(j)),
      ...converge(j.link, j.theirs, j.peer, props(j)),
    ];
    (out[n] as BuiltEnd).changed = changed;
  }
  afterRead?.();
  deleteAll(socks, views, doomed);
  const errors = createVethPairs(socks, fresh);
  // Those left down: their qdisc, then up (unless declared down).
  const created = errors.map((e) => e === undefined);
  fresh.forEach((f, i) => {
    if (errors[i] || !f.a.down) return;
    const j = jobs[f.job] as VethJob;
    try {
      converge(j.link, j.mine, j.me, props(j));
      converge(j.link, j.theirs, j.peer, props(j));
    } catch (err) {
      errors[i] = err as NetlinkError;
    }
  });
  const failed = errors.findIndex((e) => e !== undefined);
  if (failed >= 0) {
    // Take back the pairs that were made: deleting the `a` end takes the peer along.
    const made = new Map<string, KernelLink[]>();
    fresh.forEach((f, i) => {
      if (created[i]) add(made, f.a.ns, { index: f.a.index, name: f.a.name } as KernelLink);
    });
    try {
      deleteAll(socks, views, made);
    } catch {
      // the first error is the one to report
    }
    throw errors[failed];
  }
  for (const f of fresh) out[f.job] = { name: f.a.name, mac: f.a.mac, sandbox: f.a.ns };
  return out;
}

export interface TunnelSpec extends EndProps {
  vni: number;
  remote: string;
  underlay: string | undefined;
  hostNetns: string | undefined;
}

export interface TunnelJob {
  link: string;
  end: EndSpec;
  at: Place;
  tunnel: TunnelSpec;
  /** Rebuild even when right (the other side was rebuilt: no neighbour entry may survive). */
  fresh: boolean;
}

/**
 * Makes this node's ends of VXLAN links match their jobs: created, finished (addresses, up)
 * when right already, or rebuilt when they point elsewhere or `fresh` asks for it. Per job:
 * the end built, or the error (a failed job leaves nothing of what it created). The jobs
 * whose create lost a race are tried again from a fresh read (CREATE_ATTEMPTS); `afterRead`
 * as for buildVeths.
 */
export function buildTunnelEnds(jobs: TunnelJob[], afterRead?: () => void): Array<BuiltEnd | Error> {
  const out = buildTunnelEndsOnce(jobs, afterRead);
  for (let attempt = 2; attempt <= CREATE_ATTEMPTS; attempt++) {
    const again = out.flatMap((r, n) => (lostRace(r) ? [n] : []));
    if (again.length === 0) break;
    const redo = buildTunnelEndsOnce(
      again.map((n) => jobs[n] as TunnelJob),
      afterRead,
    );
    again.forEach((n, i) => {
      out[n] = redo[i] as BuiltEnd | Error;
    });
  }
  return out;
}

function buildTunnelEndsOnce(
  jobs: TunnelJob[],
  afterRead: (() => void) | undefined,
): Array<BuiltEnd | Error> {
  const out: Array<BuiltEnd | Error> = new Array(jobs.length);
  if (jobs.length === 0) return out;
  using socks = new NetnsSockets();
  const views = new Views(socks);
  const doomed = new Map<string, KernelLink[]>();
  const inPlace: number[] = [];
  const create: number[] = [];
  jobs.forEach((j, n) => {
    try {
      if (!j.tunnel.underlay) {
        throw new CniError(
          Code.InvalidConfig,
          "invalid network configuration: field parent_interface: missing, and it is needed for VXLAN " +
            "links (links between pods on different nodes)",
        );
      }
      const v = views.get(j.at.netns);
      const p = classify(j.link, v.links.get(j.end.ifname), j.at.netns);
      if (p.state === "foreign") throw notOurs(j.link, j.end.ifname, j.at, p.link);
      const right =
        p.state === "ours" &&
        marked(j.link, p.link) &&
        p.link.kind === "vxlan" &&
        p.link.vni === j.tunnel.vni &&
        p.link.remote === j.tunnel.remote;
      if (right && !j.fresh) {
        // Changed in place: addresses, qdisc, state (also what a killed agent left unfinished).
        out[n] = { name: j.end.ifname, mac: p.link.mac, sandbox: j.at.netns };
        if (!settled(v, p.link, j.end, j.tunnel)) inPlace.push(n);
        return;
      }
      if (p.state === "ours") add(doomed, j.at.netns, p.link);
      create.push(n);
    } catch (err) {
      out[n] = err as Error;
    }
  });
  try {
    deleteAll(socks, views, doomed);
  } catch (err) {
    for (const n of create) out[n] = err as Error;
    return out;
  }
  for (const n of inPlace) {
    const j = jobs[n] as TunnelJob;
    try {
      (out[n] as BuiltEnd).changed = converge(j.link, j.end, j.at, j.tunnel);
    } catch (err) {
      out[n] = err as Error;
    }
  }
  const byHost = new Map<string | undefined, number[]>();
  for (const n of create) add(byHost, (jobs[n] as TunnelJob).tunnel.hostNetns, n);
  for (const [hostNs, list] of byHost) {
    // The ifindex asked for in a pod netns must be free in the host netns too (bulk.ts).
    const hostLinks = dumpLinks(socks.socket(hostNs));
    for (const netns of new Set(list.map((n) => (jobs[n] as TunnelJob).at.netns)))
      views.get(netns).alloc.avoid(hostLinks);
    const specs = list.map((n) => {
      const j = jobs[n] as TunnelJob;
      return {
        end: {
          name: j.end.ifname,
          ns: j.at.netns,
          index: views.get(j.at.netns).alloc.take(),
          mac: j.end.mac ?? randomMac(),
          alias: markOf(j.link),
          group: groupOf(j.at.netns),
          ips: j.end.ips,
          ...(j.tunnel.mtu !== undefined ? { mtu: j.tunnel.mtu } : {}),
          ...(staysDown(j.end, j.tunnel) ? { down: true } : {}),
        },
        vni: j.tunnel.vni,
        remote: j.tunnel.remote,
        underlay: j.tunnel.underlay as string,
      };
    });
    afterRead?.();
    const errors = createVxlans(socks, hostNs, specs);
    list.forEach((n, i) => {
      const s = specs[i] as (typeof specs)[number];
      const j = jobs[n] as TunnelJob;
      let err: Error | undefined = errors[i];
      if (!err && s.end.down) {
        // Its qdisc, then up (unless declared down); a failure leaves nothing of it.
        try {
          converge(j.link, j.end, j.at, j.tunnel);
        } catch (e) {
          err = e as Error;
          try {
            removeEnds(j.at, [{ link: j.link, ifname: j.end.ifname }]);
          } catch {
            // the first error is the one to report
          }
        }
      }
      out[n] = err ?? { name: s.end.name, mac: s.end.mac, sandbox: s.end.ns };
    });
  }
  return out;
}

/**
 * Removes ratchet's ends of links in one netns: those present and marked for their link,
 * several in one kernel call. An interface of a wanted name that is not ratchet's for that
 * link is never touched (logged). Returns the names removed and, per end that stayed, why.
 */
export function removeEnds(
  at: Place,
  ends: Array<{ link: string; ifname: string }>,
  log?: Logger,
): { removed: Array<{ link: string; ifname: string }>; failures: string[] } {
  if (ends.length === 0) return { removed: [], failures: [] };
  using socks = new NetnsSockets();
  let v: NetnsView;
  try {
    v = new Views(socks).get(at.netns);
  } catch (err) {
    if (err instanceof NetnsNotFoundError) return { removed: [], failures: [] };
    throw err;
  }
  const ours: Array<{ link: string; ifname: string; l: KernelLink }> = [];
  for (const e of ends) {
    const p = classify(e.link, v.links.get(e.ifname), at.netns);
    if (p.state === "foreign") {
      log?.warn("not removing an interface ratchet did not build for this link", {
        link: e.link,
        pod: at.pod,
        ifname: e.ifname,
      });
    }
    if (p.state === "ours") ours.push({ ...e, l: p.link });
  }
  const errs = deleteIndexes(
    socks.socket(at.netns),
    ours.map((o) => o.l.index),
    v.all,
    groupOf(at.netns),
  );
  const removed: Array<{ link: string; ifname: string }> = [];
  const failures: string[] = [];
  ours.forEach((o, i) => {
    const e = errs[i];
    if (e) failures.push(`${o.ifname} (link ${o.link}): failed to delete it: ${e.message}`);
    else removed.push({ link: o.link, ifname: o.ifname });
  });
  return { removed, failures };
}

/** Removes ratchet's end of `link` named `ifname`: true when it was there and is gone now. */
export function removeEnd(link: string, ifname: string, at: Place, log?: Logger): boolean {
  const r = removeEnds(at, [{ link, ifname }], log);
  if (r.failures.length > 0) throw new NetlinkError(r.failures[0] as string);
  return r.removed.length > 0;
}
