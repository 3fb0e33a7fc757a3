// What the linker tells observability about links as it works (Events, metrics, the
// network-status annotation). Every method returns at once and never throws: observing must
// not change the outcome of a CNI call. Pods are "namespace/name".

export interface BuiltLink {
  link: string;
  kind: "veth" | "vxlan";
  pod: string;
  ifname: string;
  peer: string;
  peerIfname: string;
  /** A veth: the peer's end was built here too, in the peer's netns. */
  both: boolean;
  /** How long the build took. */
  seconds: number;
}

export interface LinkWait {
  link: string;
  peer: string;
  state: "waiting" | "refused" | "conflict";
  why: string;
}

export interface LinkObserver {
  /** A link end (both ends of a veth) was built, or made to match in place. */
  linkBuilt(b: BuiltLink): void;
  /** A link of the pod was not built now, and why. */
  linkWaits(pod: string, w: LinkWait): void;
  /** Building failed (kernel, netlink); the message is the error's. */
  linkFailed(pod: string, err: unknown, link?: string): void;
  /** The declarations of a link disagree, or a change of them fails validation. */
  linkConflict(pod: string, message: string, link?: string): void;
  /** The pod's end of the link was removed (with a veth, the peer's end too). */
  linkRemoved(pod: string, link: string, peer?: string): void;
}

/** The boot (or delegate) network's result for the pod's default network-status entry. */
export interface BootStatus {
  name: string;
  interface: string;
  ips: string[];
  mac?: string | undefined;
  dns?: Record<string, unknown> | undefined;
}

/** What the agent's handlers tell observability besides links. */
export interface AgentObserver extends LinkObserver {
  /** An ADD of the pod succeeded (with the boot network's result when the plugin sent it). */
  attached(pod: string, boot?: BootStatus): void;
}

const nothing = () => undefined;

/** Observes nothing: the default until an agent is given an observer. */
export const quietObserver: AgentObserver = {
  linkBuilt: nothing,
  linkWaits: nothing,
  linkFailed: nothing,
  linkConflict: nothing,
  linkRemoved: nothing,
  attached: nothing,
};
