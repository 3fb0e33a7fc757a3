// Per-link-end metrics, read from the kernel at scrape time: one link dump per pod netns
// (IFLA_STATS64 counters, admin state, carrier, ratchet's mark), and the count of ends by
// state. The reader (counters-reader.ts) reads in a worker thread, or here in slices with
// turns of the event loop between them: a scrape never holds up CNI requests for long.
import type { LinkCounters } from "../netlink/counters.ts";
import type { CountersReader } from "./counters-reader.ts";
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
  /** Its label set, rendered at first use (an end object lives as long as its container). */
  labels?: string;
}

export const END_STATES = ["up", "down", "waiting", "broken"] as const;
export type EndState = (typeof END_STATES)[number];

/** What the agent last learnt of an end that is not in the kernel (see Observer). */
export type EndRecord = "waiting" | "built" | "broken";

export interface CollectOptions {
  /** What the agent last recorded for (pod, link); undefined when nothing. */
  recorded: (pod: string, link: string) => EndRecord | undefined;
  /** Reads the netns (one dump each). */
  reader: CountersReader;
}

export interface Collected {
  /** The exposition of ratchet_link_ends and every per-end family, in pieces to send in turn. */
  chunks: string[];
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
/** Ends per piece of a family's samples. */
const PIECE_ENDS = 256;
const END_LABELS = ["namespace", "pod", "interface", "peer_namespace", "peer_pod"] as const;

const split = (id: string): [string, string] => {
  const i = id.indexOf("/");
  return [id.slice(0, i), id.slice(i + 1)];
};

/** Where an end stands: up or down when the kernel holds it, else what the agent recorded. */
function stateOf(found: LinkCounters | undefined, record: EndRecord | undefined): EndState {
  if (found) return found.up && found.carrier ? "up" : "down";
  // Built and gone, or it failed or conflicts: broken. Not there yet: waiting.
  return record === "built" || record === "broken" ? "broken" : "waiting";
}

/** Reads every end's netns (one dump each) and renders the per-end families. */
export async function collectLinkMetrics(ends: LinkEnd[], opts: CollectOptions): Promise<Collected> {
  const byNetns = new Map<string, LinkEnd[]>();
  for (const e of ends) {
    const list = byNetns.get(e.netns);
    if (list) list.push(e);
    else byNetns.set(e.netns, [e]);
  }
  // Per family: pieces of PIECE_ENDS ends each, grown with += (ropes): each piece is flattened
  // and sent on its own, so no single step of a large scrape holds the event loop for long.
  const families = [...COUNTERS.map(() => [] as string[]), [] as string[]];
  const current = families.map(() => "");
  let inPiece = 0;
  const byState: Record<EndState, number> = { up: 0, down: 0, waiting: 0, broken: 0 };
  for await (const [netns, rows] of opts.reader([...byNetns.keys()])) {
    // A netns that could not be read is gone (the pod is being deleted): its ends are absent.
    const links = new Map((rows ?? []).map((l) => [l.name, l]));
    for (const e of byNetns.get(netns) ?? []) {
      const l = links.get(e.ifname);
      const found = l !== undefined && l.alias === e.mark ? l : undefined;
      byState[stateOf(found, opts.recorded(e.pod, e.link))]++;
      if (!found) continue;
      e.labels ??= labelText(END_LABELS, [...split(e.pod), e.ifname, ...split(e.peer)]);
      const labels = e.labels;
      for (let i = 0; i < COUNTERS.length; i++) {
        const [name, , pick] = COUNTERS[i] as (typeof COUNTERS)[number];
        current[i] += `${name}{${labels}} ${pick(found)}\n`;
      }
      current[COUNTERS.length] += `ratchet_link_up{${labels}} ${found.up && found.carrier ? 1 : 0}\n`;
      if (++inPiece < PIECE_ENDS) continue;
      for (const [i, piece] of current.entries()) families[i]?.push(piece);
      current.fill("");
      inPiece = 0;
    }
  }
  for (const [i, piece] of current.entries()) families[i]?.push(piece);
  const out = new Exposition();
  out.family("ratchet_link_ends", "gauge", "Link ends on this node by state (up, down, waiting, broken).");
  for (const s of END_STATES) out.sample("ratchet_link_ends", labelText(["state"], [s]), byState[s]);
  const pieces = (i: number) => {
    for (const piece of families[i] ?? []) out.lines(piece);
  };
  COUNTERS.forEach(([name, help], i) => {
    out.family(name, "counter", help);
    pieces(i);
  });
  out.family("ratchet_link_up", "gauge", "1 when a link end is administratively up and has carrier, else 0.");
  pieces(COUNTERS.length);
  return { chunks: out.chunks(), byState, netns: byNetns.size, ends: ends.length };
}
