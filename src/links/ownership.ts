// Whose an interface is: ratchet's mark on every end it builds (IFLA_IFALIAS, a digest of
// the link) and the device group it creates them in (a digest of the pod's netns), read from
// one dump of a netns. The builder changes only what this says is ratchet's for that link.
import { createHash } from "node:crypto";
import { NotOursError } from "../cni/errors.ts";
import { show } from "../cni/names.ts";
import type { Address } from "../netlink/addr.ts";
import { dumpAddresses, dumpLinks, IndexAllocator, NetnsSockets } from "../netlink/bulk.ts";
import {
  getLink,
  type Impairment,
  type Link as KernelLink,
  LinkNotFoundError,
  NetnsNotFoundError,
} from "../netlink/index.ts";

const digest = (text: string) => createHash("sha256").update(text).digest();

/** The mark of every interface ratchet builds for `link` (at most 255 bytes: a digest). */
export function markOf(link: string): string {
  return `ratchet:v1:${digest(link).toString("hex").slice(0, 32)}`;
}

/**
 * The device group (IFLA_GROUP) ratchet creates every end in a pod's netns in: from a
 * digest of the netns, never 0 (the default). It comes with the RTM_NEWLINK itself, where
 * the alias can only follow once the interface exists, so an end whose creation was cut
 * short (the agent killed in between) is still known as ratchet's: the group, no alias yet.
 * And a pod's DEL removes all its ends with one kernel call: "delete group".
 */
export function groupOf(netns: string): number {
  return (digest(netns).readUInt32BE(0) & 0x7fffffff) | 1;
}

/** Where one end lives: its pod (for messages) and netns (from this node's own CNI calls). */
export interface Place {
  pod: string;
  netns: string;
}

export type Presence =
  | { state: "absent" }
  | { state: "ours"; link: KernelLink }
  | { state: "foreign"; link: KernelLink };

export function classify(link: string, l: KernelLink | undefined, netns: string): Presence {
  if (!l) return { state: "absent" };
  // Half-built by an agent that died before it could set the alias: no alias, our group.
  const halfBuilt = l.alias === "" && l.group === groupOf(netns) && (l.kind === "veth" || l.kind === "vxlan");
  const ours = l.alias === markOf(link) || halfBuilt;
  return ours ? { state: "ours", link: l } : { state: "foreign", link: l };
}

/** Ours and finished: marked (an end cut short has only its group). */
export const marked = (link: string, l: KernelLink) => l.alias === markOf(link);

/** What holds `ifname` in `netns` now, and whether it is ratchet's for `link`. */
export function presence(link: string, ifname: string, netns: string): Presence {
  try {
    return classify(link, getLink(ifname, netns), netns);
  } catch (err) {
    if (err instanceof LinkNotFoundError || err instanceof NetnsNotFoundError) return { state: "absent" };
    throw err;
  }
}

/** One netns as read at the start of a batch: its links by name, addresses by ifindex. */
export interface NetnsView {
  netns: string;
  links: Map<string, KernelLink>;
  all: KernelLink[];
  addrs: Map<number, Address[]>;
  alloc: IndexAllocator;
  /** Root qdiscs by ifindex, read at first use. */
  roots?: Map<number, Impairment | undefined>;
}

/** Reads each netns once per batch. */
export class Views {
  private readonly views = new Map<string, NetnsView>();
  constructor(readonly socks: NetnsSockets) {}
  get(netns: string): NetnsView {
    let v = this.views.get(netns);
    if (!v) {
      const sock = this.socks.socket(netns);
      const all = dumpLinks(sock);
      v = {
        netns,
        all,
        links: new Map(all.map((l) => [l.name, l])),
        addrs: dumpAddresses(sock),
        alloc: new IndexAllocator(all),
      };
      this.views.set(netns, v);
    }
    return v;
  }
}

/** What holds `ifname` in a netns read by inspect(), and whether it is ratchet's for `link`. */
export function presenceIn(view: NetnsView, link: string, ifname: string): Presence {
  return classify(link, view.links.get(ifname), view.netns);
}

/** Reads one netns: its links and addresses (CHECK, `ratchet links`). */
export function inspect(netns: string): NetnsView {
  using socks = new NetnsSockets();
  return new Views(socks).get(netns);
}

export function notOurs(link: string, ifname: string, at: Place, l: KernelLink): NotOursError {
  const kind = l.kind === "other" ? l.infoKind : l.kind;
  return new NotOursError(
    `link ${link}: interface ${show(ifname)} in netns ${show(at.netns)} of pod ${at.pod} already exists ` +
      `(${kind || "no kind"}) and was not built by ratchet for this link: it is left alone; ` +
      "rename the link's interface or remove that interface",
  );
}
