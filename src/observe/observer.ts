// The agent's observability in one place: it hears about CNI requests and links (from the
// server and the linker), keeps the metrics, posts Events and keeps the network-status
// annotation current. The agent binds it to its node state and API client once loaded.
import { toCniError } from "../cni/errors.ts";
import type { Logger } from "../log.ts";
import type { Interim, Request } from "../rpc/protocol.ts";
import { COMMIT, VERSION } from "../version.ts";
import { EventBatcher } from "./event-batch.ts";
import { EventRecorder, type EventType } from "./events.ts";
import { type Kernel, linkSides, type ObserverBindings } from "./bindings.ts";
import { podRef } from "./kube-api.ts";
import { type Collected, collectLinkMetrics, type EndRecord, type LinkEnd } from "./link-metrics.ts";
import type { AgentObserver, BootStatus, BuiltLink, LinkWait } from "./link-observer.ts";
import { Counter, Exposition, Histogram, labelText, TallyCounter } from "./metrics.ts";
import { NetworkStatusWriter, type StatusEntry } from "./network-status.ts";
import { writeProcessMetrics } from "./process.ts";

const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const BUILD_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];
const NO_TALLY = new Map<string, number>();
async function* none(): AsyncIterable<never> {}

/** Eligible classifies remembered for the attach or check that follows, at most. */
const CARRIED = 1024;

/** "ratchet/<peer>": the peer pod's name, with its namespace when it is another one. */
function statusName(pod: string, peer: string): string {
  const ns = (id: string) => id.slice(0, id.indexOf("/"));
  return `ratchet/${ns(pod) === ns(peer) ? peer.slice(peer.indexOf("/") + 1) : peer}`;
}

export class Observer implements AgentObserver {
  private b: ObserverBindings | undefined;
  private events: EventRecorder | undefined;
  private status: NetworkStatusWriter | undefined;
  /** What the agent last learnt of each (pod, link) end, by "pod|link". */
  private readonly records = new Map<string, EndRecord>();
  /** Ends whose conflict is not in the node state (not agreed, so never given an interface). */
  private readonly conflicts = new Set<string>();
  /** Ends whose wait was announced by an Event (once per link, not per retry). */
  private readonly announced = new Set<string>();
  /** Time an eligible classify took, added to the attach or check that follows it. */
  private readonly carried = new Map<string, number>();
  private collecting: Promise<Collected> | undefined;
  /** Each container's ends, made once per container object (and their labels with them). */
  private endsOf = new WeakMap<object, LinkEnd[]>();
  private lastCollect = { seconds: 0, netns: 0 };
  /** Events of many links in one turn as one (event-batch.ts). */
  private readonly batch = new EventBatcher((pod, type, reason, message) =>
    this.event(pod, type, reason, message),
  );
  private readonly startSeconds = Date.now() / 1000;

  readonly cniRequests = new Counter(
    "ratchet_cni_requests_total",
    "CNI requests the node agent served, by command and result (ok or the CNI error code).",
    ["command", "result"],
  );
  readonly cniDuration = new Histogram(
    "ratchet_cni_request_duration_seconds",
    "Time the node agent spent on a CNI request.",
    ["command"],
    DURATION_BUCKETS,
  );
  readonly buildDuration = new Histogram(
    "ratchet_link_build_duration_seconds",
    "Time to build a link on this node (both ends of a veth, this node's end of a VXLAN link).",
    ["kind"],
    BUILD_BUCKETS,
  );

  constructor(
    private readonly log: Logger,
    private readonly opts: { networkStatus: boolean },
  ) {}

  /** Connects the observer to the loaded agent: its node state, API client and checks. */
  bind(b: ObserverBindings): void {
    this.b = b;
    this.events = new EventRecorder(b.api, { node: b.node, log: this.log });
    if (this.opts.networkStatus)
      this.status = new NetworkStatusWriter(b.api, (pod) => this.statusEntries(pod), this.log, {
        ...(b.cachedPod ? { cached: b.cachedPod } : {}),
      });
  }

  // ---- links ----------------------------------------------------------------------------

  private record(pod: string, link: string, r: EndRecord | undefined): EndRecord | undefined {
    const k = `${pod}|${link}`;
    const before = this.records.get(k);
    if (r === undefined) this.records.delete(k);
    else this.records.set(k, r);
    if (r !== "broken") this.conflicts.delete(k);
    return before;
  }

  private event(pod: string, type: EventType, reason: string, message: string): void {
    try {
      this.events?.emit(podRef(pod, this.b?.uidOf(pod)), type, reason, message);
    } catch (err) {
      this.log.warn("could not note an Event", { pod, reason, error: (err as Error).message });
    }
  }

  linkBuilt(b: BuiltLink): void {
    const before = this.record(b.pod, b.link, "built");
    if (b.both) this.record(b.peer, b.link, "built");
    this.announced.delete(`${b.pod}|${b.link}`);
    this.announced.delete(`${b.peer}|${b.link}`);
    // Made to match in place (already built): no new Event, no build time.
    if (before !== "built") {
      this.buildDuration.observe([b.kind], b.seconds);
      const up = (pod: string, ifname: string, peer: string, peerIfname: string) =>
        this.batch.note(
          pod,
          "Normal",
          "LinkUp",
          `${peer} ${b.kind}`,
          `link ${ifname} <-> ${peer} ${peerIfname} built (${b.kind})`,
          ifname,
          (n, names) => `${n} links <-> ${peer} built (${b.kind}): ${names}`,
        );
      up(b.pod, b.ifname, b.peer, b.peerIfname);
      if (b.both) up(b.peer, b.peerIfname, b.pod, b.ifname);
    }
    this.status?.refresh(b.pod);
    if (b.both) this.status?.refresh(b.peer);
  }

  linkWaits(pod: string, w: LinkWait): void {
    const { ifname, peerIfname } = linkSides(w.link, pod);
    const what = `link ${ifname} <-> ${w.peer} ${peerIfname}`;
    if (w.state === "waiting") {
      this.record(pod, w.link, "waiting");
      const k = `${pod}|${w.link}`;
      if (this.announced.has(k)) return;
      this.announced.add(k);
      this.batch.note(
        pod,
        "Normal",
        "LinkWaiting",
        `${w.peer} ${w.why}`,
        `${what} waits: ${w.why}`,
        ifname,
        (n, names) => `${n} links <-> ${w.peer} wait: ${w.why}: ${names}`,
      );
      return;
    }
    this.record(pod, w.link, "broken");
    if (w.state === "conflict") this.conflicts.add(`${pod}|${w.link}`);
    this.event(pod, "Warning", "LinkConflict", `${what} is not built: ${w.why}`);
  }

  linkFailed(pod: string, err: unknown, link?: string): void {
    if (link) this.record(pod, link, "broken");
    this.event(pod, "Warning", "LinkFailed", err instanceof Error ? err.message : String(err));
  }

  linkConflict(pod: string, message: string, link?: string): void {
    if (link) {
      this.record(pod, link, "broken");
      this.conflicts.add(`${pod}|${link}`);
    }
    this.event(pod, "Warning", "LinkConflict", message);
  }

  linkRemoved(pod: string, link: string, peer?: string): void {
    this.record(pod, link, undefined);
    this.announced.delete(`${pod}|${link}`);
    this.status?.refresh(pod);
    if (!peer) return;
    // The peer still declares it (or its pod is going too): its end waits for this pod again.
    if (this.records.has(`${peer}|${link}`)) this.record(peer, link, "waiting");
    this.announced.delete(`${peer}|${link}`);
    this.status?.refresh(peer);
  }

  attached(pod: string, boot?: BootStatus): void {
    if (!this.status) return;
    if (boot) this.status.setBoot(pod, { ...boot, default: true, dns: boot.dns ?? {} });
    this.status.refresh(pod);
  }

  /** Ratchet's network-status entries of a pod, read from the kernel now. */
  private statusEntries(pod: string): StatusEntry[] | undefined {
    const view = this.b?.view;
    if (!view) return undefined;
    let found: { netns: string; links: Record<string, string> } | undefined;
    for (const c of view.containers()) if (c.pod === pod) found = c;
    if (!found) return undefined;
    const out: StatusEntry[] = [];
    let ifaces: ReturnType<Kernel["ifaces"]>;
    try {
      ifaces = this.b?.kernel.ifaces(found.netns) ?? new Map();
    } catch {
      return out; // the netns is gone: no entries
    }
    for (const [link, ifname] of Object.entries(found.links)) {
      const l = ifaces.get(ifname);
      // Not there (yet, or any more), or not ratchet's: no entry.
      if (!l || l.alias !== view.mark(link)) continue;
      const name = statusName(pod, linkSides(link, pod).peer);
      out.push({ name, interface: ifname, ips: l.ips, mac: l.mac, dns: {} });
    }
    return out;
  }

  // ---- CNI requests -----------------------------------------------------------------------

  /** Wraps the agent's request handler: counts and times each CNI command as the agent sees it. */
  track<R>(handle: (req: Request, signal: AbortSignal, interim: Interim) => Promise<R>) {
    return async (req: Request, signal: AbortSignal, interim: Interim = () => undefined): Promise<R> => {
      const env = "env" in req.params ? req.params.env : undefined;
      if (!env) return handle(req, signal, interim);
      const key = `${env.command}|${env.containerId}`;
      const t0 = performance.now();
      const carried = () => {
        const c = this.carried.get(key) ?? 0;
        this.carried.delete(key);
        return c;
      };
      try {
        const r = await handle(req, signal, interim);
        const seconds = (performance.now() - t0) / 1000;
        if (req.method === "classify" && (r as { eligible?: unknown }).eligible === true) {
          // An attach (ADD) or check (CHECK) follows: the command ends there.
          this.carried.set(key, seconds);
          if (this.carried.size > CARRIED) this.carried.delete(this.carried.keys().next().value as string);
          return r;
        }
        this.countCni(env.command, "ok", seconds + carried());
        return r;
      } catch (err) {
        this.countCni(env.command, String(toCniError(err).code), (performance.now() - t0) / 1000 + carried());
        throw err;
      }
    };
  }

  private countCni(command: string, result: string, seconds: number): void {
    this.cniRequests.inc([command, result]);
    this.cniDuration.observe([command], seconds);
  }

  // ---- scrape -----------------------------------------------------------------------------

  /** This node's link ends: each container's links, and conflicts that got no interface. */
  private ends(): LinkEnd[] {
    const view = this.b?.view;
    if (!view) return [];
    const out: LinkEnd[] = [];
    const pods = new Set<string>();
    const conflicts = new Map<string, string[]>();
    for (const k of this.conflicts) {
      const [pod, link] = k.split("|") as [string, string];
      conflicts.set(pod, [...(conflicts.get(pod) ?? []), link]);
    }
    for (const c of view.containers()) {
      pods.add(c.pod);
      const end = (link: string, ifname: string): LinkEnd => ({
        pod: c.pod,
        netns: c.netns,
        ifname,
        link,
        peer: linkSides(link, c.pod).peer,
        mark: view.mark(link),
      });
      let mine = this.endsOf.get(c);
      if (!mine || mine.length !== Object.keys(c.links).length) {
        mine = Object.entries(c.links).map(([link, ifname]) => end(link, ifname));
        this.endsOf.set(c, mine);
      }
      for (const e of mine) out.push(e);
      for (const link of conflicts.get(c.pod) ?? [])
        if (!(link in c.links)) out.push(end(link, linkSides(link, c.pod).ifname));
    }
    // What is known of pods no longer on this node goes.
    for (const set of [this.records, this.announced, this.conflicts] as const)
      for (const k of set.keys()) if (!pods.has(k.slice(0, k.indexOf("|")))) set.delete(k);
    return out;
  }

  /** One collection of the kernel's view at a time; concurrent scrapes share it. */
  private collect(): Promise<Collected> {
    this.collecting ??= (async () => {
      const t0 = performance.now();
      try {
        const got = await collectLinkMetrics(this.ends(), {
          reader: (netns) => this.b?.kernel.readCounters(netns) ?? none(),
          recorded: (p, l) => this.records.get(`${p}|${l}`),
        });
        this.lastCollect = { seconds: (performance.now() - t0) / 1000, netns: got.netns };
        return got;
      } finally {
        this.collecting = undefined;
      }
    })();
    return this.collecting;
  }

  /** The whole exposition for /metrics, in pieces to send one after the other. */
  async metrics(): Promise<string[]> {
    const links = await this.collect();
    const out = new Exposition();
    out
      .family("ratchet_build_info", "gauge", "The running ratchet build (always 1).")
      .sample("ratchet_build_info", labelText(["version", "commit"], [VERSION, COMMIT]), 1);
    out
      .family(
        "ratchet_agent_start_time_seconds",
        "gauge",
        "When the node agent started, in seconds since the epoch.",
      )
      .sample("ratchet_agent_start_time_seconds", "", this.startSeconds);
    this.cniRequests.write(out);
    this.cniDuration.write(out);
    this.buildDuration.write(out);
    const b = this.b;
    const tallies: Array<[string, string, string, () => ReadonlyMap<string, number>]> = [
      [
        "ratchet_etcd_requests_total",
        "etcd transactions by result.",
        "result",
        () => b?.etcdResults() ?? NO_TALLY,
      ],
      [
        "ratchet_netlink_requests_total",
        "Netlink requests by result (ok or errno).",
        "result",
        () => b?.kernel.results ?? NO_TALLY,
      ],
      [
        "ratchet_kube_requests_total",
        "Kubernetes API requests by result (ok, HTTP status, error).",
        "result",
        () => b?.kubeResults() ?? NO_TALLY,
      ],
      [
        "ratchet_events_total",
        "Kubernetes Event writes by outcome.",
        "result",
        () => this.events?.results ?? NO_TALLY,
      ],
      [
        "ratchet_network_status_writes_total",
        "network-status annotation updates by outcome.",
        "result",
        () => this.status?.results ?? NO_TALLY,
      ],
    ];
    for (const [name, help, label, tally] of tallies) new TallyCounter(name, help, label, tally).write(out);
    for (const chunk of links.chunks) out.lines(chunk);
    out
      .family(
        "ratchet_link_collect_duration_seconds",
        "gauge",
        "How long the last read of the link ends' counters took.",
      )
      .sample("ratchet_link_collect_duration_seconds", "", this.lastCollect.seconds);
    writeProcessMetrics(out);
    return out.chunks();
  }

  /** Why the agent is not ready; empty when it is. */
  async notReady(): Promise<string[]> {
    if (!this.b) return ["the node agent is still starting"];
    return this.b.ready();
  }

  /** Sends what is pending (for a moment at most) and stops. */
  async close(flushMs = 1000): Promise<void> {
    await Promise.all([this.events?.flush(flushMs), this.status?.flush(flushMs)]);
    this.events?.close();
    this.status?.close();
    this.b?.kernel.close?.();
  }

  /** Waits until Events and annotation updates noted so far are sent (tests, shutdown). */
  async settle(timeoutMs = 5000): Promise<void> {
    await Promise.all([this.events?.flush(timeoutMs), this.status?.flush(timeoutMs)]);
  }
}
