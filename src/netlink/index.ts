// The netlink layer's public surface. Everything is synchronous; every verb takes an optional
// netns path (/var/run/netns/x, /proc/<pid>/ns/net; undefined = the current netns) and
// throws NetlinkError (cniCode 101) subclasses: LinkNotFoundError, NetnsNotFoundError.
export { ErrnoError, LinkNotFoundError, NetlinkError, NetnsNotFoundError, errnoName } from "./errors.ts";
export {
  addVethPair,
  addVxlan,
  deleteLink,
  getLink,
  listLinks,
  moveLink,
  renameLink,
  setAlias,
  setLinkUp,
  setMac,
  setMtu,
  VXLAN_PORT,
  type Link,
  type LinkBase,
  type OperState,
  type OtherLink,
  type VethEnd,
  type VethLink,
  type VxlanLink,
  type VxlanSpec,
} from "./link.ts";
export { addAddress, firstIpv4Address, listAddresses, type Address } from "./addr.ts";
export { withNetns } from "./netns.ts";
