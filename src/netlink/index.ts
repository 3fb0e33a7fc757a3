// The netlink layer's public surface. Everything is synchronous; every verb takes an optional
// netns path (/var/run/netns/x, /proc/<pid>/ns/net; undefined = the current netns) and
// throws NetlinkError (cniCode 101) subclasses: LinkNotFoundError, NetnsNotFoundError,
// QdiscKindUnsupported.
export {
  Errno,
  ErrnoError,
  LinkNotFoundError,
  NetlinkError,
  NetnsNotFoundError,
  QdiscKindUnsupported,
  errnoName,
} from "./errors.ts";
export {
  addVethPair,
  addVxlan,
  deleteLink,
  getLink,
  listLinks,
  moveLink,
  renameLink,
  setLink,
  setLinkUp,
  setMac,
  setMtu,
  VXLAN_PORT,
  type Link,
  type LinkBase,
  type LinkChanges,
  type LinkStats,
  type OperState,
  type OtherLink,
  type VethEnd,
  type VethLink,
  type VxlanLink,
  type VxlanSpec,
} from "./link.ts";
export { addAddress, deleteAddress, firstIpv4Address, listAddresses, type Address } from "./addr.ts";
export { withNetns } from "./netns.ts";
export { listLinkCounters, type LinkCounters } from "./counters.ts";
export { requestResults as netlinkRequestResults } from "./socket.ts";
export { deleteRootQdisc, getRootQdisc, listRootQdiscs, setRootQdisc } from "./qdisc.ts";
export {
  IMPAIRMENT_LIMITS,
  NETEM_LIMIT,
  TBF_BURST_MS,
  TBF_LATENCY_MS,
  impairmentProblem,
  sameImpairment,
  tbfSizes,
  type Impairment,
  type NetemImpairment,
  type Qdisc,
  type TbfImpairment,
} from "./tc.ts";
