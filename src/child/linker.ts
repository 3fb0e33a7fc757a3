// Links pods: registers endpoints in etcd, builds veth pairs (same node) and VXLAN ends
// (across nodes), completes links whose peer comes later, and undoes them on DEL.
//
// Who builds a link: the pod whose registration sees the peer already registered. Each
// registration is one etcd transaction that writes the endpoint and reads the peers, and
// etcd orders transactions, so of two pods starting together exactly one sees the other:
// never both (no EEXIST), never neither (no lost link).
import type { Etcd3 } from "etcd3";
import type { NetConf } from "../cni/config.ts";
import type { CniEnv } from "../cni/env.ts";
import { CniError, Code } from "../cni/errors.ts";
import { show } from "../cni/names.ts";
import type { Logger } from "../log.ts";
import {
  addAddress,
  addVethPair,
  addVxlan,
  deleteLink,
  firstIpv4Address,
  getLink,
  LinkNotFoundError,
  listAddresses,
  NetnsNotFoundError,
  setLinkUp,
} from "../netlink/index.ts";
import { cmp, keyOf, op, parse, txn, type Compare, type KeyValue, type Op } from "../store/etcd-ops.ts";
import {
  FIRST_VNI,
  Keys,
  MAX_VNI,
  podId,
  sides,
  toLink,
  type Endpoint,
  type Link,
  type LinkRecord,
  type NodeLink,
} from "../store/model.ts";
import { linkDifferences, linkKey, type EndSpec, type LinkSpec } from "../pods/podspec.ts";

export interface AttachedInterface {
  iface: { name: string; mac?: string; sandbox?: string; mtu?: number };
  ips: string[];
}

/** A declaration as stored: the link as its declarer wrote it. */
interface Declaration {
  declarer: string;
  spec: LinkSpec;
}

const MAX_COMMIT_ATTEMPTS = 8;

/** The node-level settings a linker works with (one per etcd + prefix + node). */
export interface NodeSettings {
  prefix: string;
  parentInterface: string | undefined;
  parentAddress: string;
  hostNetns: string | undefined;
}

export function nodeSettings(conf: NetConf): NodeSettings {
  return {
    prefix: conf.etcd_prefix,
    parentInterface: conf.parent_interface,
    parentAddress: conf.parent_address,
    hostNetns: conf.host_netns,
  };
}

/** Deletes an interface, treating a missing netns or link as already done. */
function removeIface(ifname: string, netns: string | undefined): boolean {
  if (!netns) return false;
  try {
    deleteLink(ifname, netns);
    return true;
  } catch (err) {
    if (err instanceof LinkNotFoundError || err instanceof NetnsNotFoundError) return false;
    throw err;
  }
}

function addAddresses(end: EndSpec, netns: string): void {
  for (const ip of end.ips) addAddress(end.ifname, ip, netns);
}

export class Linker {
  readonly keys: Keys;
  private nodeAddr: string | undefined;
  /** This node's endpoints as last seen. */
  readonly local = new Map<string, Endpoint>();
  /** "ns/pod/containerId" -> the link interfaces of that container: DEL works from here when etcd is away. */
  private readonly localIfnames = new Map<string, string[]>();

  constructor(
    private readonly etcd: Etcd3,
    readonly settings: NodeSettings,
    private readonly log: Logger,
  ) {
    this.keys = new Keys(settings.prefix);
  }

  /** This node's VTEP: parent_address, else the first IPv4 address of parent_interface. */
  get node(): string {
    this.nodeAddr ??= this.findVtep();
    return this.nodeAddr;
  }

  private findVtep(): string {
    const { parentAddress, parentInterface, hostNetns } = this.settings;
    if (parentAddress) return parentAddress;
    if (!parentInterface) {
      throw new CniError(
        Code.InvalidConfig,
        "invalid network configuration: field parent_address: empty, and parent_interface is not set either (one is needed to name this node)",
      );
    }
    const addr = firstIpv4Address(parentInterface, hostNetns);
    if (!addr)
      throw new CniError(
        Code.Netlink,
        `parent_interface ${show(parentInterface)} has no IPv4 address to use as this node's VTEP (set parent_address)`,
      );
    return addr;
  }

  // ---- ADD ---------------------------------------------------------------------------

  async attach(env: Omit<CniEnv, "args">, links: LinkSpec[]): Promise<AttachedInterface[]> {
    const pod = env.pod;
    if (!pod) throw new CniError(Code.Internal, "attach without a pod");
    const id = podId({ namespace: pod.namespace, pod: pod.name });
    const node = this.node;
    for (const l of links) {
      if (l.local.ifname === env.ifname) {
        throw new CniError(
          Code.InvalidPodSpec,
          `pod ${id}: link interface ${show(l.local.ifname)} is CNI_IFNAME, the interface of the boot network`,
        );
      }
    }
    const endpoint: Endpoint = {
      namespace: pod.namespace,
      pod: pod.name,
      containerId: env.containerId,
      ifname: env.ifname,
      netns: env.netns,
      node,
      ...(this.settings.parentInterface ? { parentInterface: this.settings.parentInterface } : {}),
      links,
      createdAt: new Date().toISOString(),
    };
    const mine = new Map(links.map((l) => [linkKey(l), l]));
    const knownPeers = [...new Set(links.map((l) => podId(l.peer)))];
    const keys = this.keys;

    // Round trip 1: register and read, in one transaction (reads first: they see the state
    // before our writes).
    // Besides the declarations touching us, we read peers/<us>/: the endpoints of the pods
    // that declare links to us, copied there when they registered. So a pod that only opts
    // in learns its peers and whether they are registered in this same round trip.
    const reads: Op[] = [
      op.prefix(keys.declPrefix(id)),
      op.prefix(keys.peersPrefix(id)),
      ...knownPeers.map((p) => op.get(keys.endpoint(p))),
      ...[...mine.keys()].map((k) => op.get(keys.link(k))),
      op.get(keys.vniNext),
    ];
    const writes: Op[] = [
      op.put(keys.endpoint(id), endpoint),
      op.put(keys.nodeEndpoint(node, id), env.containerId),
    ];
    for (const [k, spec] of mine) {
      writes.push(op.put(keys.decl(id, k, id), spec), op.put(keys.decl(podId(spec.peer), k, id), spec));
    }
    for (const p of knownPeers) writes.push(op.put(keys.peer(p, id), endpoint));
    const r1 = await txn(this.etcd, [], [...reads, ...writes]);
    const myRev = r1.revision;
    let i = 0;
    const declKvs = r1.ranges[i++] ?? [];
    const peers = new Map<string, { ep: Endpoint; rev: string }>();
    for (const kv of r1.ranges[i++] ?? []) {
      const ep = parse<Endpoint>(kv);
      if (ep) peers.set(podId(ep), { ep, rev: kv.mod_revision });
    }
    for (const p of knownPeers) {
      const kv = r1.ranges[i++]?.[0];
      const ep = parse<Endpoint>(kv);
      if (ep && kv) peers.set(p, { ep, rev: kv.mod_revision });
    }
    const records = new Map<string, { rec: LinkRecord | undefined; rev: string }>();
    for (const k of mine.keys()) {
      const kv = r1.ranges[i++]?.[0];
      records.set(k, { rec: parse<LinkRecord>(kv), rev: kv?.mod_revision ?? "0" });
    }
    const vniNextKv = r1.ranges[i++]?.[0];

    // Every declaration of every link touching this pod: ours (now) and the others' (read).
    const decls = new Map<string, Declaration[]>();
    const stale: Array<{ link: string; peer: string }> = [];
    for (const kv of declKvs) {
      const parsed = keys.parseDecl(id, keyOf(kv));
      const spec = parse<LinkSpec>(kv);
      if (!parsed || !spec) continue;
      if (parsed.declarer === id) {
        if (!mine.has(parsed.link))
          stale.push({ link: parsed.link, peer: podId(sides(toLink(parsed.link, spec), id).theirs) }); // an earlier container's
        continue;
      }
      const list = decls.get(parsed.link) ?? [];
      list.push({ declarer: parsed.declarer, spec });
      decls.set(parsed.link, list);
    }
    for (const [k, spec] of mine) decls.set(k, [...(decls.get(k) ?? []), { declarer: id, spec }]);
    try {
      this.checkAgreement(id, env.ifname, decls);
    } catch (err) {
      await this.unregister(id, myRev, mine).catch((e: unknown) =>
        this.log.warn("could not undo a refused registration", { pod: id, error: (e as Error).message }),
      );
      throw err;
    }

    // Links we learned from the peer's declaration: their records were not read. We assume
    // none (a fresh link); the commit below compares, and re-reads one that exists.

    // What to build: every link whose peer is registered. The rest waits for the peer.
    const builds: Array<{
      link: Link;
      peer: Endpoint;
      kind: "veth" | "vxlan";
      prev: LinkRecord | undefined;
      prevRev: string;
    }> = [];
    for (const k of decls.keys()) {
      const link = this.linkOf(k, decls);
      const peerId = podId(sides(link, id).theirs);
      const peer = peers.get(peerId)?.ep;
      const prev = records.get(k);
      if (!peer) {
        this.log.info("link waits for its peer", { link: k, pod: id, peer: peerId });
        continue;
      }
      const { theirs } = sides(link, id);
      if (theirs.ifname === peer.ifname) {
        // Never touch the interface the peer's own network gave it.
        this.log.error("link refused: it names the peer's CNI_IFNAME", {
          link: k,
          pod: id,
          peer: peerId,
          ifname: theirs.ifname,
        });
        continue;
      }
      if (link.a.namespace !== link.b.namespace) {
        // Across namespaces, opting in is not consent enough: both pods must declare the link.
        const declarers = new Set((decls.get(k) ?? []).map((d) => d.declarer));
        if (!declarers.has(id) || !declarers.has(peerId)) {
          this.log.warn("cross-namespace link waits for both pods to declare it", {
            link: k,
            pod: id,
            declaredBy: [...declarers],
          });
          continue;
        }
      }
      builds.push({
        link,
        peer,
        kind: peer.node === node ? "veth" : "vxlan",
        prev: prev?.rec,
        prevRev: prev?.rev ?? "0",
      });
    }

    // Round trip 2: record what we build (VNIs allocated atomically); retried on a race.
    // Skipped when there is nothing to build or clean up.
    const plans = await this.commitBuilds(id, endpoint, myRev, builds, vniNextKv, stale);

    // Now the kernel: our ends (and, on one node, both ends of the veth).
    const out: AttachedInterface[] = [];
    for (const p of plans) out.push(this.realize(id, endpoint, p));
    this.local.set(id, endpoint);
    this.localIfnames.set(
      `${id}/${env.containerId}`,
      [...decls.keys()].map((k) => sides(this.linkOf(k, decls), id).mine.ifname),
    );
    return out;
  }

  /** The declarations under decl/<id>/, grouped by link. */
  private declarations(id: string, kvs: KeyValue[] | undefined): Map<string, Declaration[]> {
    const decls = new Map<string, Declaration[]>();
    for (const kv of kvs ?? []) {
      const parsed = this.keys.parseDecl(id, keyOf(kv));
      const spec = parse<LinkSpec>(kv);
      if (!parsed || !spec) continue;
      const list = decls.get(parsed.link) ?? [];
      list.push({ declarer: parsed.declarer, spec });
      decls.set(parsed.link, list);
    }
    return decls;
  }

  /** One link from its declarations (they agree: checked before). */
  private linkOf(k: string, decls: Map<string, Declaration[]>): Link {
    const d = decls.get(k);
    const first = d?.[0];
    if (!first) throw new CniError(Code.Internal, `no declaration of link ${k}`);
    const link = toLink(k, first.spec);
    for (const other of d.slice(1)) {
      const o = toLink(k, other.spec);
      if (link.mtu === undefined && o.mtu !== undefined) link.mtu = o.mtu;
      if (link.a.mac === undefined && o.a.mac !== undefined) link.a.mac = o.a.mac;
      if (link.b.mac === undefined && o.b.mac !== undefined) link.b.mac = o.b.mac;
    }
    return link;
  }

  /** Declarations of one link must agree, and this pod's interface names must be unique. */
  private checkAgreement(id: string, cniIfname: string, decls: Map<string, Declaration[]>): void {
    const names = new Map<string, string>();
    for (const [k, list] of decls) {
      const [first, ...rest] = list;
      if (!first) continue;
      for (const other of rest) {
        const diff = linkDifferences(first.spec, other.spec);
        if (diff.length > 0) {
          throw new CniError(
            Code.InvalidPodSpec,
            `pod ${id}: link ${k} is declared differently by ${first.declarer} and ${other.declarer}: ${diff.join("; ")}`,
          );
        }
      }
      const { mine } = sides(toLink(k, first.spec), id);
      if (mine.ifname === cniIfname)
        throw new CniError(
          Code.InvalidPodSpec,
          `pod ${id}: link ${k} (declared by ${first.declarer}) uses ${show(mine.ifname)}, the boot network's CNI_IFNAME`,
        );
      const taken = names.get(mine.ifname);
      if (taken && taken !== k)
        throw new CniError(
          Code.InvalidPodSpec,
          `pod ${id}: interface ${show(mine.ifname)} is used by two links, ${taken} and ${k}`,
        );
      names.set(mine.ifname, k);
    }
  }

  /** Undoes a registration this call made (its declarations too), if nothing newer replaced it. */
  private async unregister(id: string, rev: string, mine: Map<string, LinkSpec>): Promise<void> {
    const ops: Op[] = [op.del(this.keys.endpoint(id)), op.del(this.keys.nodeEndpoint(this.node, id))];
    for (const [k, spec] of mine)
      ops.push(op.del(this.keys.decl(id, k, id)), op.del(this.keys.decl(podId(spec.peer), k, id)));
    for (const p of new Set([...mine.values()].map((spec) => podId(spec.peer))))
      ops.push(op.del(this.keys.peer(p, id)));
    await txn(this.etcd, [cmp.modRev(this.keys.endpoint(id), rev)], ops);
  }

  private async commitBuilds(
    id: string,
    endpoint: Endpoint,
    myRev: string,
    builds: Array<{
      link: Link;
      peer: Endpoint;
      kind: "veth" | "vxlan";
      prev: LinkRecord | undefined;
      prevRev: string;
    }>,
    vniNextKv: KeyValue | undefined,
    stale: Array<{ link: string; peer: string }>,
  ): Promise<Array<{ record: LinkRecord; peer: Endpoint; rebuilt: boolean }>> {
    const keys = this.keys;
    let next = vniNextKv;
    let current = builds;
    // VNIs below this were found taken: never tried again in this call.
    let floor = FIRST_VNI;
    for (let attempt = 0; attempt < MAX_COMMIT_ATTEMPTS; attempt++) {
      const compare: Compare[] = [cmp.modRev(keys.endpoint(id), myRev)];
      const ops: Op[] = [];
      const stillPeers = new Set(endpoint.links.map((l) => podId(l.peer)));
      for (const s of stale) {
        ops.push(op.del(keys.decl(id, s.link, id)), op.del(keys.decl(s.peer, s.link, id)));
        if (!stillPeers.has(s.peer)) ops.push(op.del(keys.peer(s.peer, id)));
      }
      let vni = Math.max(next ? Number(next.value.toString()) || FIRST_VNI : FIRST_VNI, floor);
      const firstTried = vni;
      let allocated = false;
      const plans: Array<{ record: LinkRecord; peer: Endpoint; rebuilt: boolean }> = [];
      for (const b of current) {
        compare.push(cmp.modRev(keys.link(b.link.key), b.prevRev));
        const record: LinkRecord = {
          ...b.link,
          kind: b.kind,
          ends: {
            [id]: { node: endpoint.node, containerId: endpoint.containerId },
            [podId(b.peer)]: { node: b.peer.node, containerId: b.peer.containerId },
          },
        };
        if (b.kind === "vxlan") {
          if (b.prev?.vni !== undefined) {
            record.vni = b.prev.vni;
          } else {
            if (vni > MAX_VNI) vni = FIRST_VNI;
            compare.push(cmp.absent(keys.vni(vni)));
            ops.push(op.put(keys.vni(vni), b.link.key));
            record.vni = vni++;
            allocated = true;
          }
          const { mine, theirs } = sides(b.link, id);
          const theirNode: NodeLink = {
            key: b.link.key,
            end: theirs,
            containerId: b.peer.containerId,
            netns: b.peer.netns,
            vni: record.vni,
            remote: endpoint.node,
            builtBy: endpoint.node,
            ...(b.link.mtu ? { mtu: b.link.mtu } : {}),
          };
          const myNode: NodeLink = {
            key: b.link.key,
            end: mine,
            containerId: endpoint.containerId,
            netns: endpoint.netns,
            vni: record.vni,
            remote: b.peer.node,
            builtBy: endpoint.node,
            ...(b.link.mtu ? { mtu: b.link.mtu } : {}),
          };
          ops.push(
            op.put(keys.nodeLink(b.peer.node, b.link.key), theirNode),
            op.put(keys.nodeLink(endpoint.node, b.link.key), myNode),
          );
        } else if (b.prev?.kind === "vxlan" && b.prev.vni !== undefined) {
          // The link was a tunnel and is now on one node: free its VNI and the old node entries.
          ops.push(op.del(keys.vni(b.prev.vni)));
          for (const e of Object.values(b.prev.ends))
            if (e.node !== endpoint.node) ops.push(op.del(keys.nodeLink(e.node, b.link.key)));
          ops.push(op.del(keys.nodeLink(endpoint.node, b.link.key)));
        }
        ops.push(op.put(keys.link(b.link.key), record));
        plans.push({ record, peer: b.peer, rebuilt: b.prev !== undefined });
      }
      if (allocated) {
        compare.push(cmp.modRev(keys.vniNext, next?.mod_revision ?? "0"));
        ops.push(op.put(keys.vniNext, String(vni)));
      }
      if (ops.length === 0 && plans.length === 0) return [];
      const r = await txn(this.etcd, compare, ops, [
        op.get(keys.vniNext),
        op.get(keys.endpoint(id)),
        ...current.map((b) => op.get(keys.link(b.link.key))),
      ]);
      if (r.succeeded) return plans;
      // Someone else moved: a newer container of ours, a VNI taken, a link recorded meanwhile.
      const [nextKvs, epKvs, ...linkKvs] = r.ranges;
      const ep = parse<Endpoint>(epKvs?.[0]);
      if (!ep || ep.containerId !== endpoint.containerId) {
        throw new CniError(
          Code.TryAgainLater,
          `pod ${id} was registered again by another ADD while this one was linking`,
        );
      }
      myRev = epKvs?.[0]?.mod_revision ?? myRev;
      next = nextKvs?.[0];
      if (allocated) floor = firstTried + 1;
      current = current.map((b, n) => ({
        ...b,
        prev: parse<LinkRecord>(linkKvs[n]?.[0]),
        prevRev: linkKvs[n]?.[0]?.mod_revision ?? "0",
      }));
    }
    throw new CniError(
      Code.TryAgainLater,
      `could not record the links of pod ${id}: etcd kept changing under us`,
    );
  }

  /** Builds this pod's end of a recorded link (both ends when the peer is on this node). */
  private realize(
    id: string,
    me: Endpoint,
    plan: { record: LinkRecord; peer: Endpoint; rebuilt: boolean },
  ): AttachedInterface {
    const { record, peer, rebuilt } = plan;
    const { mine, theirs } = sides(record, id);
    // Ends of an earlier build of this very link (a retried ADD, a peer that moved) are
    // replaced; a name taken by anything else is not ours to remove, and fails with EEXIST.
    if (rebuilt) removeIface(mine.ifname, me.netns);
    if (record.kind === "veth") {
      if (rebuilt) removeIface(theirs.ifname, peer.netns);
      addVethPair({
        a: {
          name: mine.ifname,
          ns: me.netns,
          ...(record.mtu ? { mtu: record.mtu } : {}),
          ...(mine.mac ? { mac: mine.mac } : {}),
        },
        b: {
          name: theirs.ifname,
          ns: peer.netns,
          ...(record.mtu ? { mtu: record.mtu } : {}),
          ...(theirs.mac ? { mac: theirs.mac } : {}),
        },
      });
      addAddresses(mine, me.netns);
      addAddresses(theirs, peer.netns);
    } else {
      this.addTunnelEnd(mine, me.netns, record.vni as number, peer.node, record.mtu);
    }
    this.log.info("link built", {
      link: record.key,
      kind: record.kind,
      vni: record.vni,
      pod: id,
      peer: podId(peer),
    });
    const l = getLink(mine.ifname, me.netns);
    return { iface: { name: mine.ifname, mac: l.mac, sandbox: me.netns }, ips: mine.ips };
  }

  private addTunnelEnd(
    end: EndSpec,
    netns: string,
    vni: number,
    remote: string,
    mtu: number | undefined,
  ): void {
    const { parentInterface, hostNetns } = this.settings;
    if (!parentInterface)
      throw new CniError(
        Code.InvalidConfig,
        "invalid network configuration: field parent_interface: missing, and it is needed for VXLAN links",
      );
    addVxlan({
      name: end.ifname,
      ns: netns,
      vni,
      remote,
      underlay: parentInterface,
      ...(hostNetns ? { hostNs: hostNetns } : {}),
      ...(mtu ? { mtu } : {}),
      ...(end.mac ? { mac: end.mac } : {}),
    });
    addAddresses(end, netns);
  }

  // ---- watch: the other node built a tunnel to one of our pods -------------------------

  /**
   * Makes the local end of a VXLAN link match its node entry: created, or rebuilt if it
   * points elsewhere. `fresh` (a new entry from the watch: the other side was just built)
   * rebuilds a matching end too, so no neighbour entry for the peer's old MAC survives.
   */
  async ensureNodeLink(nl: NodeLink, fresh = false): Promise<void> {
    const id = podId(nl.end);
    const kv = (await txn(this.etcd, [], [op.get(this.keys.endpoint(id))])).ranges[0]?.[0];
    const ep = parse<Endpoint>(kv);
    if (!ep || ep.containerId !== nl.containerId || ep.node !== this.node) return; // that container is gone
    if (nl.end.ifname === ep.ifname) {
      this.log.error("tunnel end refused: it names the pod's CNI_IFNAME", {
        link: nl.key,
        pod: id,
        ifname: nl.end.ifname,
      });
      return;
    }
    try {
      const cur = getLink(nl.end.ifname, ep.netns);
      if (!fresh && cur.kind === "vxlan" && cur.vni === nl.vni && cur.remote === nl.remote) {
        // The right tunnel; an agent killed while building it may have left it without its
        // addresses or down: finish it.
        const have = listAddresses(nl.end.ifname, ep.netns).map((a) => `${a.address}/${a.prefixLength}`);
        for (const ip of nl.end.ips) if (!have.includes(ip)) addAddress(nl.end.ifname, ip, ep.netns);
        if (!cur.up) setLinkUp(nl.end.ifname, true, ep.netns);
        return;
      }
      if (cur.kind !== "vxlan") {
        // Not a tunnel end of ours: some other plugin's interface. Leave it, say so.
        this.log.error("tunnel end not built: the name is taken by another interface", {
          link: nl.key,
          pod: id,
          ifname: nl.end.ifname,
          kind: cur.kind,
        });
        return;
      }
      removeIface(nl.end.ifname, ep.netns);
    } catch (err) {
      if (err instanceof NetnsNotFoundError) return;
      if (!(err instanceof LinkNotFoundError)) throw err;
    }
    this.addTunnelEnd(nl.end, ep.netns, nl.vni, nl.remote, nl.mtu);
    this.log.info("tunnel end built for a peer on another node", {
      link: nl.key,
      vni: nl.vni,
      pod: id,
      remote: nl.remote,
    });
  }

  /** A node entry went away: the link is gone, remove our end if our pod is still here. */
  async dropNodeLink(key: string): Promise<void> {
    const [x, y] = key.split(":");
    for (const end of [x, y]) {
      const [ns, pod, ifname] = (end ?? "").split("/");
      const ep = this.local.get(`${ns}/${pod}`);
      if (ep && ifname) {
        const rec = (await txn(this.etcd, [], [op.get(this.keys.link(key))])).ranges[0]?.[0];
        if (!rec && removeIface(ifname, ep.netns))
          this.log.info("removed the end of a link that is gone", { link: key, pod: podId(ep) });
      }
    }
  }

  /** At start: this node's endpoints into memory, and every tunnel end of this node built. */
  async reconcile(): Promise<number> {
    const node = this.node;
    const r = await txn(
      this.etcd,
      [],
      [op.prefix(this.keys.nodeEndpointsPrefix(node)), op.prefix(this.keys.nodeLinksPrefix(node))],
    );
    const ids = (r.ranges[0] ?? []).map((kv) => keyOf(kv).slice(this.keys.nodeEndpointsPrefix(node).length));
    if (ids.length > 0) {
      const eps = await txn(
        this.etcd,
        [],
        ids.map((id) => op.get(this.keys.endpoint(id))),
      );
      for (const kvs of eps.ranges) {
        const ep = parse<Endpoint>(kvs?.[0]);
        if (ep && ep.node === node) this.local.set(podId(ep), ep);
      }
    }
    let fixed = 0;
    for (const kv of r.ranges[1] ?? []) {
      const nl = parse<NodeLink>(kv);
      if (!nl) continue;
      try {
        await this.ensureNodeLink(nl);
        fixed++;
      } catch (err) {
        this.log.warn("could not build a tunnel end at start", {
          link: nl.key,
          error: (err as Error).message,
        });
      }
    }
    return fixed;
  }

  // ---- DEL -------------------------------------------------------------------------------

  /**
   * Removes the container's link ends and, if its endpoint is still this container's, its
   * records. Returns true when ratchet had attached it, undefined when it cannot tell.
   */
  async detach(env: Omit<CniEnv, "args">): Promise<boolean | undefined> {
    const pod = env.pod;
    if (!pod) return false;
    const id = podId({ namespace: pod.namespace, pod: pod.name });
    const keys = this.keys;
    let r1: Awaited<ReturnType<typeof txn>>;
    try {
      r1 = await txn(this.etcd, [], [op.get(keys.endpoint(id)), op.prefix(keys.declPrefix(id))]);
    } catch (err) {
      // etcd is away: remove the ends we know of now; the caller retries the records later.
      for (const ifname of this.localIfnames.get(`${id}/${env.containerId}`) ?? []) {
        if (removeIface(ifname, env.netns))
          this.log.info("removed link end (etcd unreachable)", { pod: id, ifname });
      }
      throw err;
    }
    const epKv = r1.ranges[0]?.[0];
    const ep = parse<Endpoint>(epKv);
    const decls = this.declarations(id, r1.ranges[1]);
    const ours = ep !== undefined && ep.containerId === env.containerId;
    const netns = env.netns || (ours ? ep.netns : "");
    // Local first: our ends go now, whatever happens to the records.
    for (const k of decls.keys()) {
      const { mine } = sides(this.linkOf(k, decls), id);
      if (removeIface(mine.ifname, netns))
        this.log.info("removed link end", { link: k, pod: id, ifname: mine.ifname });
    }
    // Not (or no longer) this container's endpoint: whether ratchet had it is for the caller to find out.
    if (!ours) return undefined;
    await this.removeRecords(id, ep, epKv?.mod_revision ?? "0", decls);
    this.local.delete(id);
    this.localIfnames.delete(`${id}/${env.containerId}`);
    return true;
  }

  /**
   * Removes a deregistered pod's records. Per link: while the peer is registered, the
   * declarations stay (the link comes back with this pod); otherwise everything of the link
   * goes. The peers' endpoints are compared in the same transaction, so two pods deleted at
   * once cannot both keep a link for the other (the second one retries and cleans up).
   */
  private async removeRecords(
    id: string,
    ep: Endpoint,
    rev: string,
    decls: Map<string, Declaration[]>,
  ): Promise<void> {
    const keys = this.keys;
    const linkKeys = [...decls.keys()];
    const peerIds = [...new Set(linkKeys.map((k) => podId(sides(this.linkOf(k, decls), id).theirs)))];
    for (let attempt = 0; attempt < MAX_COMMIT_ATTEMPTS; attempt++) {
      const r2 = await txn(
        this.etcd,
        [],
        [...peerIds.map((p) => op.get(keys.endpoint(p))), ...linkKeys.map((k) => op.get(keys.link(k)))],
      );
      const peerRev = new Map(peerIds.map((p, n) => [p, r2.ranges[n]?.[0]?.mod_revision ?? "0"]));
      const compare: Compare[] = [
        cmp.modRev(keys.endpoint(id), rev),
        ...peerIds.map((p) => cmp.modRev(keys.endpoint(p), peerRev.get(p) as string)),
      ];
      const ops: Op[] = [op.del(keys.endpoint(id)), op.del(keys.nodeEndpoint(ep.node, id))];
      // Our endpoint copies for the pods we declared links to: we are not registered any more.
      for (const p of new Set(ep.links.map((l) => podId(l.peer)))) ops.push(op.del(keys.peer(p, id)));
      linkKeys.forEach((k, n) => {
        const rec = parse<LinkRecord>(r2.ranges[peerIds.length + n]?.[0]);
        const peerId = podId(sides(this.linkOf(k, decls), id).theirs);
        if (peerRev.get(peerId) !== "0") {
          ops.push(op.del(keys.nodeLink(ep.node, k)));
          return;
        }
        ops.push(
          op.delPrefix(`${keys.declPrefix(id)}${k}/`),
          op.delPrefix(`${keys.declPrefix(peerId)}${k}/`),
          op.del(keys.link(k)),
        );
        if (rec?.vni !== undefined) ops.push(op.del(keys.vni(rec.vni)));
        for (const e of Object.values(rec?.ends ?? {})) ops.push(op.del(keys.nodeLink(e.node, k)));
        ops.push(op.del(keys.nodeLink(ep.node, k)));
      });
      // etcd refuses a transaction that touches one key twice.
      const seen = new Set<string>();
      const unique = ops.filter((o) => {
        const k = `${(o.request_delete_range?.key ?? o.request_put?.key)?.toString()}:${o.request_delete_range?.range_end?.toString() ?? ""}`;
        if (seen.has(k)) return false;
        seen.add(k);
        return true;
      });
      const r = await txn(this.etcd, compare, unique, [op.get(keys.endpoint(id))]);
      if (r.succeeded) return;
      const now = parse<Endpoint>(r.ranges[0]?.[0]);
      if (!now || now.containerId !== ep.containerId) {
        this.log.info("endpoint changed meanwhile (a newer ADD): records kept", { pod: id });
        return;
      }
      rev = r.ranges[0]?.[0]?.mod_revision ?? rev;
    }
    throw new CniError(
      Code.TryAgainLater,
      `could not remove the records of pod ${id}: etcd kept changing under us`,
    );
  }

  // ---- CHECK -------------------------------------------------------------------------

  async check(env: Omit<CniEnv, "args">): Promise<void> {
    const pod = env.pod;
    if (!pod) return;
    const id = podId({ namespace: pod.namespace, pod: pod.name });
    const r1 = await txn(
      this.etcd,
      [],
      [op.get(this.keys.endpoint(id)), op.prefix(this.keys.declPrefix(id))],
    );
    const ep = parse<Endpoint>(r1.ranges[0]?.[0]);
    if (!ep || ep.containerId !== env.containerId) {
      throw new CniError(
        Code.CheckFailed,
        `CHECK: pod ${id} container ${env.containerId} is not registered with ratchet`,
      );
    }
    const decls = this.declarations(id, r1.ranges[1]);
    const linkKeys = [...decls.keys()];
    const peerIds = linkKeys.map((k) => podId(sides(this.linkOf(k, decls), id).theirs));
    const r2 = linkKeys.length
      ? await txn(
          this.etcd,
          [],
          peerIds.map((p) => op.get(this.keys.endpoint(p))),
        )
      : { ranges: [] };
    const problems: string[] = [];
    linkKeys.forEach((k, n) => {
      if (!r2.ranges[n]?.[0]) return; // the peer is not there yet: nothing to check
      const link = this.linkOf(k, decls);
      const { mine } = sides(link, id);
      try {
        const l = getLink(mine.ifname, env.netns);
        if (!l.up) problems.push(`${mine.ifname} is down`);
        if (link.mtu !== undefined && l.mtu !== link.mtu)
          problems.push(`${mine.ifname} has MTU ${l.mtu}, expected ${link.mtu}`);
        const have = listAddresses(mine.ifname, env.netns).map((a) => `${a.address}/${a.prefixLength}`);
        for (const ip of mine.ips)
          if (!have.includes(ip)) problems.push(`${mine.ifname} lacks address ${ip}`);
      } catch (err) {
        if (err instanceof LinkNotFoundError) problems.push(`${mine.ifname} (link ${k}) is missing`);
        else throw err;
      }
    });
    if (problems.length > 0)
      throw new CniError(Code.CheckFailed, `CHECK of pod ${id}: ${problems.join("; ")}`);
  }

  // ---- GC ----------------------------------------------------------------------------

  /** Removes this node's endpoints whose (container, ifname) is not a valid attachment. */
  async gc(valid: Array<{ containerID: string; ifname: string }>): Promise<number> {
    const node = this.node;
    const r = await txn(this.etcd, [], [op.prefix(this.keys.nodeEndpointsPrefix(node))]);
    let removed = 0;
    for (const kv of r.ranges[0] ?? []) {
      const id = keyOf(kv).slice(this.keys.nodeEndpointsPrefix(node).length);
      const e = await txn(this.etcd, [], [op.get(this.keys.endpoint(id))]);
      const ep = parse<Endpoint>(e.ranges[0]?.[0]);
      if (!ep) continue;
      if (valid.some((v) => v.containerID === ep.containerId && v.ifname === ep.ifname)) continue;
      const [namespace, name] = id.split("/") as [string, string];
      await this.detach({
        command: "DEL",
        containerId: ep.containerId,
        netns: ep.netns,
        ifname: ep.ifname,
        path: [],
        pod: { namespace, name },
      });
      removed++;
      this.log.info("GC removed a stale endpoint", { pod: id, containerId: ep.containerId });
    }
    return removed;
  }

  /** True while this node has ratchet pods: their links may need work (a peer may come). */
  get pendingWork(): boolean {
    return this.local.size > 0;
  }
}
