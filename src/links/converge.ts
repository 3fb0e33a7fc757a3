// Changing an existing end of ratchet's in place, one netlink request per change: what a
// live change of a link (MTU, addresses, impairment, admin state) needs, and what an agent
// killed while building an end left unfinished. Rare next to building, so not batched.
import { CniError, Code } from "../cni/errors.ts";
import { show } from "../cni/names.ts";
import {
  addAddress,
  deleteAddress,
  deleteRootQdisc,
  getRootQdisc,
  listAddresses,
  sameImpairment,
  setLink,
  setLinkUp,
  setRootQdisc,
} from "../netlink/index.ts";
import { presence, type Place } from "./builder.ts";
import { type LinkState, toImpairment } from "./impair.ts";
import type { EndSpec } from "./spec.ts";

/** What one end should be besides existing: its link's MTU and state, its own netem. */
export interface EndProps {
  mtu: number | undefined;
  state: LinkState | undefined;
}

/**
 * Makes an end of ours match its declaration in place: MTU, addresses (the declared ones,
 * and no other global ones), root qdisc (tbf, netem or the kernel's default) and admin
 * state. Returns what it changed. The qdisc is set before the link comes up.
 */
export function converge(link: string, end: EndSpec, at: Place, props: EndProps): string[] {
  const p = presence(link, end.ifname, at.netns);
  if (p.state !== "ours")
    throw new CniError(Code.Netlink, `link ${link}: ${end.ifname} is not there to change`);
  const changed: string[] = [];
  const l = p.link;
  if (props.mtu !== undefined && l.mtu !== props.mtu) {
    setLink(end.ifname, { mtu: props.mtu }, at.netns);
    changed.push(`mtu ${props.mtu}`);
  }
  const have = listAddresses(end.ifname, at.netns).filter((a) => a.scope !== "link");
  const haveText = new Set(have.map((a) => `${a.address}/${a.prefixLength}`));
  for (const ip of end.ips) {
    if (haveText.has(ip)) continue;
    addAddress(end.ifname, ip, at.netns);
    changed.push(`+${ip}`);
  }
  for (const a of haveText) {
    if (end.ips.includes(a)) continue;
    deleteAddress(end.ifname, a, at.netns);
    changed.push(`-${a}`);
  }
  const want = toImpairment(end.netem);
  const now = getRootQdisc(end.ifname, at.netns)?.impairment;
  try {
    if (want && !sameImpairment(now, want)) {
      setRootQdisc(end.ifname, want, at.netns);
      changed.push(`qdisc ${want.kind}`);
    } else if (!want && now && deleteRootQdisc(end.ifname, at.netns)) {
      changed.push("qdisc removed");
    }
  } catch (err) {
    const msg = `link ${link}, interface ${show(end.ifname)}: ${(err as Error).message}`;
    throw new CniError(Code.Netlink, msg, "", { cause: err });
  }
  const up = (props.state ?? "up") === "up";
  if (up !== l.up) {
    setLinkUp(end.ifname, up, at.netns);
    changed.push(up ? "up" : "down");
  }
  return changed;
}
