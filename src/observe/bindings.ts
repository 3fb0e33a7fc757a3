// What the observer is given by the agent once it is loaded: its node state, the kernel,
// the API client and its checks. src/child/observe.ts provides them.
import type { CountersReader } from "./counters-reader.ts";
import type { KubeApi } from "./kube-api.ts";
import type { CachedPod } from "./network-status.ts";

/**
 * This node's containers as the agent attached them, and the mark of each link's ends. A
 * container is the same object for as long as it does not change (NodeState replaces it).
 */
export interface NodeView {
  containers(): Iterable<{ pod: string; netns: string; links: Record<string, string> }>;
  mark(link: string): string;
}

/** What the observer reads of the kernel (src/netlink, loaded with the agent). */
export interface Kernel {
  /** The links of each netns with their counters (one dump each). */
  readCounters: CountersReader;
  /** The interfaces of a netns by name: MAC, mark and global addresses (one read of it). */
  ifaces(netns: string): Map<string, { mac: string; alias: string; ips: string[] }>;
  /** Netlink requests so far by result. */
  results: ReadonlyMap<string, number>;
  /** Ends what reading needs (a worker thread). */
  close?(): void;
}

export interface ObserverBindings {
  /** This node's name (Events' reportingInstance). */
  node: string;
  view: NodeView;
  kernel: Kernel;
  /** The API client; undefined when there is none. */
  api: () => KubeApi | undefined;
  /** The pod's uid as the pod cache has it. */
  uidOf: (pod: string) => string | undefined;
  /** The pod's annotations and version as the pod cache has them. */
  cachedPod?: (pod: string) => CachedPod | undefined;
  /** Why the agent is not ready (etcd, pod cache); empty when it is. */
  ready: () => Promise<string[]>;
  /** Requests by result kept by layers this module does not load. */
  etcdResults: () => ReadonlyMap<string, number>;
  kubeResults: () => ReadonlyMap<string, number>;
}

/** The pod's interface and the other end (`ns/pod`, interface) of a link key. */
export function linkSides(link: string, pod: string): { ifname: string; peer: string; peerIfname: string } {
  const ends = link.split(":");
  const mineFirst = (ends[0] ?? "").startsWith(`${pod}/`);
  const [mine, theirs] = mineFirst ? [ends[0] ?? "", ends[1] ?? ""] : [ends[1] ?? "", ends[0] ?? ""];
  const cut = (e: string) => {
    const i = e.lastIndexOf("/");
    return [e.slice(0, i), e.slice(i + 1)] as const;
  };
  const [, ifname] = cut(mine);
  const [peer, peerIfname] = cut(theirs);
  return { ifname, peer, peerIfname };
}
