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
import { type EndSpec, endId, type LinkSpec } from "../links/spec.ts";
import { LINK_STATES, type LinkState, NetemSchema } from "../links/impair.ts";
import { DECL_CHUNK, LINK_CHUNK, MAX_VNI, OBSERVED_CHUNK, VNI_BLOCKS } from "./keys.ts";

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

/** "ns/pod", both parts valid names. */
const PodRef = named((s) => {
  const [ns, pod, ...rest] = s.split("/");
  if (rest.length > 0 || ns === undefined || pod === undefined) return "is not namespace/pod";
  return namespaceProblem(ns) ?? podNameProblem(pod);
});

/** One end of a link inside a chunk whose key names the pods: interface, addresses, MAC. */
const ChunkEndSchema = v.object({
  ifname: Ifname,
  ips: v.pipe(v.array(Cidr), v.maxLength(64)),
  mac: v.optional(Mac),
  netem: v.optional(NetemSchema),
});
export type ChunkEnd = v.InferOutput<typeof ChunkEndSchema>;

/** Up to DECL_CHUNK of one pod's declarations of links to one peer (the key names both). */
export const DeclChunkSchema = v.object({
  links: v.pipe(
    v.array(
      v.object({
        local: ChunkEndSchema,
        peer: ChunkEndSchema,
        mtu: v.optional(Mtu),
        state: v.optional(v.picklist(LINK_STATES)),
        primary: v.optional(v.boolean()),
        source: v.picklist(["labels", "annotation"]),
      }),
    ),
    v.minLength(1),
    v.maxLength(DECL_CHUNK),
  ),
});
export type DeclChunk = v.InferOutput<typeof DeclChunkSchema>;

/**
 * Up to LINK_CHUNK built links between two pods a < b (the key names them): the kind, for
 * VXLAN the VNI block (link i has VNI vniOf(block, i)), and for each pod ("ns/pod") the node
 * and container the links were built for. `links` holds [a's interface, b's interface].
 */
export const PairChunkSchema = v.pipe(
  v.object({
    kind: LinkKind,
    block: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(VNI_BLOCKS - 1))),
    ends: v.record(PodRef, v.object({ node: NodeId, containerId: ContainerId })),
    links: v.pipe(v.array(v.tuple([Ifname, Ifname])), v.minLength(1), v.maxLength(LINK_CHUNK)),
    /** The commit attempt that wrote it: its own retried write is known by it. */
    writer: v.optional(v.pipe(v.string(), v.maxLength(64))),
  }),
  v.check((r) => r.kind === "veth" || r.block !== undefined, "a vxlan chunk needs a VNI block"),
);
export type PairChunk = v.InferOutput<typeof PairChunkSchema>;

/** Tells a node's agent to build (or rebuild) its ends of one VXLAN pair chunk. */
export const TunnelChunkSchema = v.pipe(
  v.object({
    /** The pod on this node ("ns/pod") and its container. */
    pod: PodRef,
    containerId: ContainerId,
    /** The other node's VTEP. */
    remote: IpAddress,
    /** The node whose ADD wrote this entry (and already built its own ends). */
    builtBy: NodeId,
    ends: v.pipe(
      v.array(
        v.object({
          key: v.string(),
          end: ChunkEndSchema,
          vni: Vni,
          mtu: v.optional(Mtu),
          state: v.optional(v.picklist(LINK_STATES)),
          /** The writer (re)built its own end just now: rebuild this one too (fresh neighbours). */
          fresh: v.optional(v.boolean()),
        }),
      ),
      v.minLength(1),
      v.maxLength(LINK_CHUNK),
    ),
  }),
  v.check(
    (t) => t.ends.every((e) => e.key.split(":").includes(`${t.pod}/${e.end.ifname}`)),
    "an end is not an end of its link on this pod",
  ),
);
export type TunnelChunk = v.InferOutput<typeof TunnelChunkSchema>;

/** One tunnel end of a TunnelChunk, with what its node needs to build it. */
export interface TunnelEnd {
  key: string;
  end: EndSpec;
  containerId: string;
  vni: number;
  remote: string;
  mtu?: number;
  state?: LinkState;
  fresh?: boolean;
  builtBy: string;
}

/** The ends of a tunnel chunk, each with its pod. */
export function tunnelEnds(t: TunnelChunk): TunnelEnd[] {
  const [namespace, pod] = t.pod.split("/") as [string, string];
  return t.ends.map((e) => ({
    key: e.key,
    end: { namespace, pod, ...e.end },
    containerId: t.containerId,
    vni: e.vni,
    remote: t.remote,
    builtBy: t.builtBy,
    ...(e.mtu !== undefined ? { mtu: e.mtu } : {}),
    ...(e.state !== undefined ? { state: e.state } : {}),
    ...(e.fresh !== undefined ? { fresh: e.fresh } : {}),
  }));
}

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

/** Up to OBSERVED_CHUNK ends of one pod (the key names it), each with its link. */
export const ObservedChunkSchema = v.object({
  ends: v.pipe(
    v.array(v.object({ link: v.string(), ...ObservedSchema.entries })),
    v.maxLength(OBSERVED_CHUNK),
  ),
});

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
