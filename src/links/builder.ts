// The kernel side of links: builds and removes link ends through src/netlink, and never
// changes an interface that does not carry ratchet's mark for that very link (ownership.ts):
// an interface of the wanted name without it belongs to someone else, and is left alone.
//
// Work comes in batches (a pod may have thousands of links): each netns involved is read
// once (one dump of its links, one of its addresses), and the changes go out through
// src/netlink/bulk.ts, many requests per sendmsg, one socket (one netns switch) per netns.
// What is already right is left as it is.
import { CniError, Code } from "../cni/errors.ts";
import { show } from "../cni/names.ts";
import type { Logger } from "../log.ts";
import {
  createVethPairs,
  createVxlans,
  deleteIndexes,
  dumpLinks,
  finishExisting,
  NetnsSockets,
  type NewEnd,
  randomMac,
} from "../netlink/bulk.ts";
import { type Link as KernelLink, NetlinkError, NetnsNotFoundError } from "../netlink/index.ts";
import type { EndSpec } from "./spec.ts";

import {
  classify,
  groupOf,
  hasAll,
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

export interface BuiltEnd {
  name: string;
  mac: string;
  sandbox: string;
}

export interface VethJob {
  link: string;
  mtu: number | undefined;
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
 * Builds veth pairs between pods of this node, both ends marked, addressed and up; a pair
 * that is already right is kept. All or nothing: on any failure, what this call built is
 * removed again and the first error is thrown (before anything is built when an interface
 * of a wanted name is not ratchet's).
 */
export function buildVeths(jobs: VethJob[]): BuiltEnd[] {
  if (jobs.length === 0) return [];
  using socks = new NetnsSockets();
  const views = new Views(socks);
  const doomed = new Map<string, KernelLink[]>();
  const fresh: Array<{ job: number; a: NewEnd; b: NewEnd }> = [];
  const out: BuiltEnd[] = new Array(jobs.length);
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
        a.up &&
        b.up &&
        (j.mtu === undefined || (a.mtu === j.mtu && b.mtu === j.mtu)) &&
        (j.mine.mac === undefined || a.mac === j.mine.mac) &&
        (j.theirs.mac === undefined || b.mac === j.theirs.mac) &&
        hasAll(vm, a, j.mine.ips) &&
        hasAll(vp, b, j.theirs.ips);
      if (right) {
        out[n] = { name: j.mine.ifname, mac: a.mac, sandbox: j.me.netns };
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
    });
    fresh.push({ job: n, a: end(j.mine, j.me, vm), b: end(j.theirs, j.peer, vp) });
  });
  deleteAll(socks, views, doomed);
  const errors = createVethPairs(socks, fresh);
  const failed = errors.findIndex((e) => e !== undefined);
  if (failed >= 0) {
    // Take back the pairs that were made: deleting the `a` end takes the peer along.
    const made = new Map<string, KernelLink[]>();
    fresh.forEach((f, i) => {
      if (!errors[i]) add(made, f.a.ns, { index: f.a.index, name: f.a.name } as KernelLink);
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

export interface TunnelSpec {
  vni: number;
  remote: string;
  mtu: number | undefined;
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
 * the end built, or the error (a failed job leaves nothing of what it created).
 */
export function buildTunnelEnds(jobs: TunnelJob[]): Array<BuiltEnd | Error> {
  const out: Array<BuiltEnd | Error> = new Array(jobs.length);
  if (jobs.length === 0) return out;
  using socks = new NetnsSockets();
  const views = new Views(socks);
  const doomed = new Map<string, KernelLink[]>();
  const finish = new Map<string, Array<{ job: number; l: KernelLink; ips: string[] }>>();
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
        // An agent killed while building it may have left it without addresses, or down.
        const have = new Set((v.addrs.get(p.link.index) ?? []).map((a) => `${a.address}/${a.prefixLength}`));
        const missing = j.end.ips.filter((ip) => !have.has(ip));
        if (missing.length > 0 || !p.link.up) add(finish, j.at.netns, { job: n, l: p.link, ips: missing });
        out[n] = { name: j.end.ifname, mac: p.link.mac, sandbox: j.at.netns };
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
  // Finishing an existing end: its missing addresses, then up, as for a new one.
  for (const [netns, items] of finish) {
    const errors = finishExisting(
      socks,
      items.map((it) => ({ name: it.l.name, ns: netns, index: it.l.index, ips: it.ips })),
    );
    items.forEach((it, i) => {
      if (errors[i]) out[it.job] = errors[i] as Error;
    });
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
        },
        vni: j.tunnel.vni,
        remote: j.tunnel.remote,
        underlay: j.tunnel.underlay as string,
      };
    });
    const errors = createVxlans(socks, hostNs, specs);
    list.forEach((n, i) => {
      const s = specs[i] as (typeof specs)[number];
      out[n] = errors[i] ?? { name: s.end.name, mac: s.end.mac, sandbox: s.end.ns };
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
