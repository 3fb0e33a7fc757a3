// What the kernel holds for a pod's link ends, written to etcd for `ratchet links`, and the
// removal of links no pod declares any more. Each netns is read once (one dump of its links,
// addresses and root qdiscs), however many links it holds.
import type { Logger } from "../log.ts";
import { type Impairment, listRootQdiscs, NetnsNotFoundError } from "../netlink/index.ts";
import type { LinkObserver } from "../observe/link-observer.ts";
import type { LinkStore } from "../store/link-store.ts";
import type { Observed } from "../store/records.ts";
import { inspect, type NetnsView, type Place, presenceIn, removeEnds } from "./builder.ts";
import { fromImpairment } from "./impair.ts";
import type { NodeState } from "./node-state.ts";
import type { BuiltLink, Plan } from "./planner.ts";

interface Deps {
  readonly store: LinkStore;
  readonly state: NodeState;
  readonly node: string;
  readonly log: Logger;
  readonly observer: LinkObserver;
}

/** The two pods of a link key. */
const podsOf = (key: string) => key.split(":").map((e) => e.split("/").slice(0, 2).join("/"));

/**
 * Writes what the kernel holds for every end on this node of pod `id`'s links (and, for a
 * veth, its peer's end), for `ratchet links`; `error` says why it may differ from the
 * declaration. Never fails the caller.
 */
export async function recordObserved(d: Deps, id: string, error?: string): Promise<void> {
  const found = d.state.containerOf(id);
  if (!found) return;
  const [, c] = found;
  const since = new Date().toISOString();
  const views = new Map<string, { view: NetnsView; roots: Map<number, Impairment | undefined> } | null>();
  const viewOf = (netns: string) => {
    if (!views.has(netns)) {
      try {
        const view = inspect(netns);
        const roots = new Map(listRootQdiscs(netns).map((q) => [q.ifindex, q.impairment]));
        views.set(netns, { view, roots });
      } catch (err) {
        if (!(err instanceof NetnsNotFoundError)) throw err;
        views.set(netns, null);
      }
    }
    return views.get(netns) ?? undefined;
  };
  const read = (link: string, ifname: string, netns: string, err?: string): Observed & { link: string } => {
    const base = { link, node: d.node, ifname, since, netem: {}, ...(err ? { error: err } : {}) };
    const v = viewOf(netns);
    const p = v ? presenceIn(v.view, link, ifname) : { state: "absent" as const };
    if (!v || p.state !== "ours") return { ...base, present: false, up: false, carrier: false, mtu: 0 };
    const l = p.link;
    const netem = fromImpairment(v.roots.get(l.index));
    return { ...base, present: true, up: l.up, carrier: l.carrier, mtu: l.mtu, netem };
  };
  try {
    const pods = [
      { id, ends: Object.entries(c.links).map(([link, ifname]) => read(link, ifname, c.netns, error)) },
    ];
    // The pods on this node holding the other end of one of these links (veths): all their
    // ends, as each pod's reports are written whole.
    for (const [, o] of d.state.entries()) {
      if (pods.some((p) => p.id === o.pod) || !Object.keys(o.links).some((k) => k in c.links)) continue;
      const ends = Object.entries(o.links).map(([link, ifname]) =>
        read(link, ifname, o.netns, link in c.links ? error : undefined),
      );
      pods.push({ id: o.pod, ends });
    }
    await d.store.writeObserved(pods);
  } catch (err) {
    d.log.warn("could not record what the kernel holds", { pod: id, error: (err as Error).message });
  }
}

/**
 * Links no pod declares any more: this pod's ends go (a veth takes the peer's), then the
 * records of pairs none of whose links stays (`kept`: peers the commit rewrote the pair of),
 * and last the reports of those ends (one written meanwhile by the peer's ADD goes too).
 */
export async function removeLinks(
  d: Deps,
  id: string,
  me: Place,
  gone: Plan["removals"],
  built: Map<string, BuiltLink>,
  kept: Set<string>,
): Promise<void> {
  const r = removeEnds(me, gone, d.log);
  for (const f of r.failures)
    d.log.warn("could not remove the end of a link no pod declares", { pod: id, error: f });
  if (r.removed.length > 0) d.log.info("links removed", { pod: id, links: r.removed.length });
  const keys = new Set(gone.map((g) => g.link));
  const peers = new Set(gone.map((g) => g.peer));
  for (const g of gone) d.observer.linkRemoved(id, g.link, g.peer);
  for (const [cid, c] of [...d.state.entries()]) {
    if (c.pod !== id && !peers.has(c.pod)) continue;
    d.state.dropLinks(
      cid,
      Object.keys(c.links).filter((k) => keys.has(k)),
    );
  }
  d.state.flush();
  const whole = [...peers].filter(
    (p) =>
      !kept.has(p) &&
      [...built.keys()].every((k) => keys.has(k) || !podsOf(k).includes(p) || !podsOf(k).includes(id)),
  );
  if (whole.length > 0) await d.store.dropPairs(id, whole);
  // Last: the peers' reports on this node lose these ends (the pod's own are written after).
  for (const p of peers) if (d.state.containerOf(p)) await recordObserved(d, p);
}
