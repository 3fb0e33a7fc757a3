// Qdisc verbs: set, read back and remove the root qdisc of a link, for impairments (tbf,
// netem; the encoding is tc.ts). Like the link verbs, each opens one socket in the netns it
// acts on, and a link may be named or given by ifindex.
import { Errno, ErrnoError, NetlinkError, QdiscKindUnsupported, inNetns } from "./errors.ts";
import { checkName, queryLink, withSocket } from "./link.ts";
import { NLM_F_CREATE, NLM_F_REPLACE, RTM_DELQDISC, RTM_GETQDISC, RTM_NEWQDISC } from "./nl.ts";
import type { NetlinkSocket } from "./socket.ts";
import {
  type Impairment,
  type Qdisc,
  TC_H_ROOT,
  TcMsg,
  decodeQdisc,
  impairmentProblem,
  qdiscAttrs,
} from "./tc.ts";

/** How messages name the link; a name is checked first (it must be a valid interface name). */
function checkedLink(link: string | number): string {
  if (typeof link === "number") return `link with index ${link}`;
  checkName(link);
  return JSON.stringify(link);
}

/** The ifindex of a link named or given by index; ENODEV (LinkNotFoundError) when absent. */
function indexOf(sock: NetlinkSocket, link: string | number): number {
  return queryLink(sock, link).index;
}

// ENOENT is the kernel's answer for a kind it has no ops for, after it tried to load
// sch_<kind> itself ("Specified qdisc kind is unknown"); some kernels say EOPNOTSUPP.
function isUnknownKind(err: unknown): err is ErrnoError {
  if (!(err instanceof ErrnoError)) return false;
  return err.errno === Errno.ENOENT || (err.errno === Errno.EOPNOTSUPP && /kind/i.test(err.extack));
}

/**
 * Makes `impairment` the root qdisc of a link, replacing whatever root it has: a change of
 * the same kind is made in place (same handle), another kind is swapped in one request.
 * QdiscKindUnsupported when the kernel lacks the kind's module (e.g. sch_netem).
 * `tc qdisc replace dev LINK root tbf ...|netem ...`
 */
export function setRootQdisc(link: string | number, impairment: Impairment, ns?: string): void {
  const what = `set ${impairment.kind} on ${checkedLink(link)} ${inNetns(ns)}`;
  const problem = impairmentProblem(impairment);
  if (problem) throw new NetlinkError(`failed to ${what}: ${problem}`, { errno: Errno.EINVAL });
  withSocket(
    ns,
    what,
    (sock) => {
      // tbf's burst depends on the MTU; netem needs only the index.
      const known = typeof link === "number" && impairment.kind === "netem";
      const target = known ? { index: link, mtu: 0 } : queryLink(sock, link);
      const attrs = qdiscAttrs(impairment, target.mtu);
      try {
        sock.change(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, new TcMsg(target.index, 0, TC_H_ROOT), attrs);
      } catch (err) {
        if (isUnknownKind(err)) throw new QdiscKindUnsupported(impairment.kind, what, err);
        throw err;
      }
    },
    true,
  );
}

/**
 * Removes the root qdisc of a link, which returns to the kernel's default (noqueue for a
 * veth). Returns false when there was nothing to remove. `tc qdisc del dev LINK root`
 */
export function deleteRootQdisc(link: string | number, ns?: string): boolean {
  return withSocket(
    ns,
    `delete the root qdisc of ${checkedLink(link)} ${inNetns(ns)}`,
    (sock) => {
      const index = indexOf(sock, link);
      try {
        sock.change(RTM_DELQDISC, 0, new TcMsg(index, 0, TC_H_ROOT), []);
        return true;
      } catch (err) {
        // The default root (handle 0) cannot be deleted: "Cannot delete qdisc with handle of zero".
        if (err instanceof ErrnoError && err.errno === Errno.ENOENT) return false;
        throw err;
      }
    },
    true,
  );
}

// One dump of the netns's qdiscs (the kernel filters by nothing), keeping the roots.
function dumpRoots(sock: NetlinkSocket, ifindex = 0): Qdisc[] {
  return sock
    .dump(RTM_GETQDISC, new TcMsg(ifindex), [])
    .map(decodeQdisc)
    .filter((q) => q.parent === TC_H_ROOT && (ifindex === 0 || q.ifindex === ifindex));
}

/**
 * The root qdisc of a link as the kernel reports it; `impairment` is set for tbf and netem.
 * Undefined when the kernel shows none (a link that was never up has no visible root).
 * `tc qdisc show dev LINK root`
 */
export function getRootQdisc(link: string | number, ns?: string): Qdisc | undefined {
  return withSocket(
    ns,
    `get the root qdisc of ${checkedLink(link)} ${inNetns(ns)}`,
    (sock) => dumpRoots(sock, indexOf(sock, link))[0],
    true,
  );
}

/** The root qdiscs of every link of a netns, in one dump. `tc qdisc show` */
export function listRootQdiscs(ns?: string): Qdisc[] {
  return withSocket(ns, `list root qdiscs ${inNetns(ns)}`, (sock) => dumpRoots(sock));
}
