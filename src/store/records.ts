// The values ratchet keeps in etcd, as valibot schemas. Any node (or anyone with write access
// to the prefix) can write these keys, so every value read is checked here before use: a
// value that fails is reported once (key, problem) and ignored, never fatal.
import * as v from "valibot";
import {
  linkInterfaceNameProblem,
  macProblem,
  mtuProblem,
  namespaceProblem,
  parseCidr,
  parseIpAddress,
  podNameProblem,
  containerIdProblem,
} from "../cni/names.ts";
import { type EndSpec, endId, type LinkSpec, linkKey } from "../links/spec.ts";
import { LINK_STATES, NetemSchema } from "../links/impair.ts";
import { MAX_VNI } from "./keys.ts";

const named = (problem: (s: string) => string | undefined) =>
  v.pipe(
    v.string("must be a string"),
    v.check(
      (s) => problem(s) === undefined,
      (i) => `${JSON.stringify(i.input)} ${problem(String(i.input))}`,
    ),
  );
const Namespace = named(namespaceProblem);
const PodName = named(podNameProblem);
const Ifname = named(linkInterfaceNameProblem);
const ContainerId = named(containerIdProblem);
const Cidr = named((s) => {
  const c = parseCidr(s);
  if ("problem" in c) return c.problem;
  return c.text === s ? undefined : `is not in canonical form (${c.text})`;
});
const IpAddress = named((s) =>
  parseIpAddress(s)?.address === s ? undefined : "is not a canonical IP address",
);
/** A node: its VTEP address, or its name when it has none (links on one node only). */
const NodeId = named((s) =>
  parseIpAddress(s)?.address === s || podNameProblem(s) === undefined
    ? undefined
    : "is not a node name or address",
);
const Mac = named((s) => macProblem(s) ?? (s === s.toLowerCase() ? undefined : "is not lower case"));
const Mtu = v.pipe(
  v.number("must be a number"),
  v.check((n) => mtuProblem(n) === undefined, "is not a valid MTU"),
);
const Vni = v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(MAX_VNI));

export const EndSpecSchema = v.object({
  namespace: Namespace,
  pod: PodName,
  ifname: Ifname,
  ips: v.pipe(v.array(Cidr), v.maxLength(64)),
  mac: v.optional(Mac),
  netem: v.optional(NetemSchema),
});

export const LinkSpecSchema = v.pipe(
  v.object({
    local: EndSpecSchema,
    peer: EndSpecSchema,
    mtu: v.optional(Mtu),
    state: v.optional(v.picklist(LINK_STATES)),
    primary: v.optional(v.boolean()),
    source: v.picklist(["labels", "annotation"]),
  }),
  v.check((l) => endId(l.local) !== endId(l.peer), "a link needs two ends"),
);

/** A pod's current container on a node. Node-local facts (its netns) are never stored. */
export const EndpointSchema = v.object({
  namespace: Namespace,
  pod: PodName,
  containerId: ContainerId,
  /** CNI_IFNAME of the container (the boot network's interface). */
  ifname: Ifname,
  /** The node: its VTEP address when it has one, else its name. */
  node: NodeId,
  /** The node's VTEP address (parent_address, or the first IPv4 of parent_interface). */
  vtep: v.optional(IpAddress),
  createdAt: v.string(),
});
export type EndpointRecord = v.InferOutput<typeof EndpointSchema>;

const LinkKind = v.picklist(["veth", "vxlan"]);
export type LinkKind = v.InferOutput<typeof LinkKind>;

/** A link that was built: kind, VNI, and for each end ("ns/pod") its node and container. */
export const LinkRecordSchema = v.pipe(
  v.object({
    key: v.string(),
    a: EndSpecSchema,
    b: EndSpecSchema,
    mtu: v.optional(Mtu),
    state: v.optional(v.picklist(LINK_STATES)),
    kind: LinkKind,
    vni: v.optional(Vni),
    ends: v.record(v.string(), v.object({ node: NodeId, containerId: ContainerId })),
  }),
  v.check((r) => linkKey({ local: r.a, peer: r.b }) === r.key, "its ends do not make its key"),
  v.check((r) => r.kind === "veth" || r.vni !== undefined, "a vxlan link needs a vni"),
);
export type LinkRecord = v.InferOutput<typeof LinkRecordSchema>;

/** Tells a node's agent to build (or rebuild) its end of a VXLAN link. */
export const TunnelEndSchema = v.pipe(
  v.object({
    key: v.string(),
    /** The end on this node. */
    end: EndSpecSchema,
    containerId: ContainerId,
    vni: Vni,
    /** The other node's VTEP. */
    remote: IpAddress,
    mtu: v.optional(Mtu),
    state: v.optional(v.picklist(LINK_STATES)),
    /** The node whose ADD wrote this entry (and already built its own end). */
    builtBy: NodeId,
    /** The writer (re)built its own end just now: rebuild this one too (fresh neighbours). */
    fresh: v.optional(v.boolean()),
  }),
  v.check((n) => n.key.split(":").includes(endId(n.end)), "its end is not an end of its link"),
);
export type TunnelEnd = v.InferOutput<typeof TunnelEndSchema>;

export const DeclSchema = LinkSpecSchema;

/** What the kernel holds for one end, as its node's agent read it back. */
export const ObservedSchema = v.object({
  node: NodeId,
  ifname: Ifname,
  present: v.boolean(),
  up: v.boolean(),
  carrier: v.boolean(),
  mtu: v.number(),
  /** The root qdisc in the declared form ({}: the kernel's default). */
  netem: NetemSchema,
  /** When this was read (after the last change ratchet applied). */
  since: v.string(),
  /** Why the kernel differs from the declaration, when a change could not be applied. */
  error: v.optional(v.string()),
});
export type Observed = v.InferOutput<typeof ObservedSchema>;

// Compile-time check that the schemas and the spec types stay the same shape.
const _end: EndSpec = {} as v.InferOutput<typeof EndSpecSchema>;
const _spec: LinkSpec = {} as v.InferOutput<typeof LinkSpecSchema>;
void _end;
void _spec;

/** Reports each bad value once per key and problem (the watch may show it again and again). */
export class BadRecords {
  private readonly seen = new Set<string>();
  constructor(private readonly report: (key: string, problem: string) => void) {}
  note(key: string, problem: string): void {
    const k = `${key}\0${problem}`;
    if (this.seen.has(k)) return;
    if (this.seen.size > 10_000) this.seen.clear();
    this.seen.add(k);
    this.report(key, problem);
  }
}

/** Parses and checks one etcd value; undefined (and reported) when it is not what `schema` says. */
export function decodeValue<S extends v.GenericSchema>(
  schema: S,
  key: string,
  value: Buffer | string,
  bad: BadRecords,
): v.InferOutput<S> | undefined {
  let json: unknown;
  try {
    json = JSON.parse(value.toString());
  } catch {
    bad.note(key, "is not JSON");
    return undefined;
  }
  const r = v.safeParse(schema, json);
  if (r.success) return r.output;
  const issue = r.issues[0];
  const path = (issue.path ?? []).map((p) => String(p.key)).join(".");
  bad.note(key, `${path ? `field ${path}: ` : ""}${issue.message}`);
  return undefined;
}
