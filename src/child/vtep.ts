// What a node without a VXLAN endpoint means, said once for `--check`, the agent's start and ADD.
import type { NetConf } from "../cni/config.ts";

/** One plain sentence when neither parent_interface nor parent_address is set; else undefined. */
export function missingVtep(conf: Pick<NetConf, "parent_interface" | "parent_address">): string | undefined {
  if (conf.parent_interface || conf.parent_address) return undefined;
  return (
    "parent_interface and parent_address are not set: this node has no VXLAN endpoint (VTEP): " +
    "links between pods on this node work (the node is named by node_name, NODE_NAME or the host " +
    "name); links to pods on other nodes (VXLAN) cannot be built and wait; pods without ratchet " +
    "labels pass through to the delegate as usual"
  );
}
