import type { NetConf } from "../cni/config.ts";
import type { CniEnv } from "../cni/env.ts";
import type { AttachedInterface } from "../cni/result.ts";
import type { BootNetwork } from "../rpc/protocol.ts";

/** What ratchet decided for one pod: pass it through, or give it links. */
export interface Classification {
  eligible: boolean;
}

/**
 * The seam between the CNI commands and the node agent. The parent handlers only talk to
 * this interface; the agent behind it reads pods, etcd and the kernel.
 */
export interface Agent {
  classify(env: CniEnv, conf: NetConf): Promise<Classification>;
  /**
   * Registers the container and builds the links whose peers are ready; `boot` is the boot
   * network's interface, for the pod's network-status annotation.
   */
  attach(env: CniEnv, conf: NetConf, boot?: BootNetwork): Promise<AttachedInterface[]>;
  /** The boot network's interface, when its plugin ran beside attach (network-status). */
  booted(env: CniEnv, conf: NetConf, boot: BootNetwork): Promise<void>;
  /**
   * Removes the container's links and records; true when ratchet had attached it. `onOwned`
   * hears as soon as the agent knows it attached the container, before the links are gone.
   */
  detach(env: CniEnv, conf: NetConf, onOwned?: () => void): Promise<boolean | undefined>;
  /** Throws when a link of this container is missing or wrong. */
  check(env: CniEnv, conf: NetConf): Promise<void>;
  /** Throws code 50 when etcd or the API server cannot be reached. */
  status(env: CniEnv, conf: NetConf): Promise<void>;
  /** Removes this node's records of attachments not in `valid`. */
  gc(env: CniEnv, conf: NetConf, valid: Array<{ containerID: string; ifname: string }>): Promise<void>;
}
