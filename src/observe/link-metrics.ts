// Per-link-end metrics, read from the kernel at scrape time: one link dump per pod netns
// (IFLA_STATS64 counters, admin state, carrier, ratchet's mark), and the count of ends by
// state. The netns are read in slices with a turn of the event loop between them, so a
// scrape of many ends never holds up the agent's CNI requests for long.
import type { LinkCounters } from "../netlink/counters.ts";
import { Exposition, labelText } from "./metrics.ts";

/** One end of a link on this node, as the agent knows it from its own CNI calls. */
export interface LinkEnd {
  /** "namespace/pod" */
  pod: string;
  netns: string;
  ifname: string;
  /** The link's key (its two ends `ns/pod/ifname`, sorted, joined by ":"). */
  link: string;
  /** "namespace/pod" of the other end. */
  peer: string;
  /** The mark (IFLA_IFALIAS) an end ratchet built for this link carries. */
  mark: string;
}

export const END_STATES = ["up", "down", "waiting", "broken"] as const;
export type EndState = (typeof END_STATES)[number];

/** What the agent last learnt of an end that is not in the kernel (see Observer). */
export type EndRecord = "waiting" | "built" | "broken";

export interface CollectOptions {
  /** What the agent last recorded for (pod, link); undefined when nothing. */
  recorded: (pod: string, link: string) => EndRecord | undefined;
  /** Reads one netns: listLinkCounters of src/netlink. */
  read: (netns: string) => LinkCounters[];
  /** Work this long at most between two turns of the event loop. */
  sliceMs?: number;
}

export interface Collected {
  /** The exposition of every per-end family, and ratchet_link_ends. */
  text: string;
  byState: Record<EndState, number>;
  netns: number;
  ends: number;
}

const COUNTERS: Array<[name: string, help: string, pick: (c: LinkCounters) => number]> = [
  ["ratchet_link_receive_bytes_total", "Bytes received on a link end.", (c) => c.rxBytes],
  ["ratchet_link_transmit_bytes_total", "Bytes sent on a link end.", (c) => c.txBytes],
  ["ratchet_link_receive_packets_total", "Packets received on a link end.", (c) => c.rxPackets],
  ["ratchet_link_transmit_packets_total", "Packets sent on a link end.", (c) => c.txPackets],
  ["ratchet_link_receive_drops_total", "Received packets dropped on a link end.", (c) => c.rxDropped],
  ["ratchet_link_transmit_drops_total", "Packets to send dropped on a link end.", (c) => c.txDropped],
];
const END_LABELS = ["namespace", "pod", "interface", "peer_namespace", "peer_pod"] as const;

const split = (id: string): [string, string] => {
  const i = id.indexOf("/");
  return [id.slice(0, i), id.slice(i + 1)];
};

/** Label sets by end, kept from one scrape to the next (ends change rarely). */
let labelCache = new Map<string, string>();
let labelsSeen = new Map<string, string>();
function labelsOf(e: LinkEnd): string {
  const k = `${e.pod}|${e.ifname}|${e.peer}`;
  let l = labelCache.get(k);
  if (l === undefined) l = labelText(END_LABELS, [...split(e.pod), e.ifname, ...split(e.peer)]);
  labelsSeen.set(k, l);
  return l;
}

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Where an end stands: up or down when the kernel holds it, else what the agent recorded. */
function stateOf(found: LinkCounters | undefined, record: EndRecord | undefined): EndState {
  if (found) return found.up && found.carrier ? "up" : "down";
  // Built and gone, or it failed or conflicts: broken. Not there yet: waiting.
  return record === "built" || record === "broken" ? "broken" : "waiting";
}

/** Reads every end's netns (one dump each) and renders the per-end families. */
export async function collectLinkMetrics(ends: LinkEnd[], opts: CollectOptions): Promise<Collected> {
  const { read } = opts;
  const sliceMs = opts.sliceMs ?? 5;
  const byNetns = new Map<string, LinkEnd[]>();
  for (const e of ends) {
    const list = byNetns.get(e.netns);
    if (list) list.push(e);
    else byNetns.set(e.netns, [e]);
  }
  // Strings grown with += (ropes, flattened once when sent): cheaper than arrays joined.
  const counters = COUNTERS.map(() => "");
  let upLines = "";
  const byState: Record<EndState, number> = { up: 0, down: 0, waiting: 0, broken: 0 };
  let sliceStart = performance.now();
  for (const [netns, list] of byNetns) {
    let links: Map<string, LinkCounters>;
    try {
      links = new Map(read(netns).map((l) => [l.name, l]));
    } catch {
      links = new Map(); // the netns is gone (the pod is being deleted): its ends are absent
    }
    for (const e of list) {
      const l = links.get(e.ifname);
      const found = l !== undefined && l.alias === e.mark ? l : undefined;
      byState[stateOf(found, opts.recorded(e.pod, e.link))]++;
      if (!found) continue;
      const labels = labelsOf(e);
      for (let i = 0; i < COUNTERS.length; i++) {
        const [name, , pick] = COUNTERS[i] as (typeof COUNTERS)[number];
        counters[i] += `${name}{${labels}} ${pick(found)}\n`;
      }
      upLines += `ratchet_link_up{${labels}} ${found.up && found.carrier ? 1 : 0}\n`;
    }
    if (performance.now() - sliceStart >= sliceMs) {
      await nextTurn();
      sliceStart = performance.now();
    }
  }
  // What this scrape used is the cache of the next one.
  labelCache = labelsSeen;
  labelsSeen = new Map();
  const out = new Exposition();
  out.family("ratchet_link_ends", "gauge", "Link ends on this node by state (up, down, waiting, broken).");
  for (const s of END_STATES) out.sample("ratchet_link_ends", labelText(["state"], [s]), byState[s]);
  COUNTERS.forEach(([name, help], i) => {
    out.family(name, "counter", help).lines(counters[i] ?? "");
  });
  out
    .family("ratchet_link_up", "gauge", "1 when a link end is administratively up and has carrier, else 0.")
    .lines(upLines);
  return { text: out.text(), byState, netns: byNetns.size, ends: ends.length };
}
