// Binds the agent's observer (src/observe) to what only the agent has: its node state (which
// link ends are where), the pod cache (pod uids, sync), the API client (Events, pod
// patches) and etcd (readiness). Loaded with the agent, after the socket listens.
import type { NetConf } from "../cni/config.ts";
import type { Logger } from "../log.ts";
import { markOf } from "../links/builder.ts";
import { inspect } from "../links/ownership.ts";
import { listLinkCounters, netlinkRequestResults } from "../netlink/index.ts";
import { inThreadReader, WorkerReader } from "../observe/counters-reader.ts";
import type { Observer } from "../observe/observer.ts";
import { kubeRequestResults } from "../pods/kube.ts";
import { nodeName } from "../pods/pods.ts";
import { stats } from "../store/etcd-ops.ts";
import { describeEtcdError, openEtcd } from "../store/etcd.ts";
import type { NodeAgent } from "./agent.ts";

/** How long a readiness probe of etcd may take, and how long its answer is reused. */
const PROBE_MS = 2000;
const PROBE_REUSE_MS = 1000;
/** Marks remembered (a digest each), at most. */
const MAX_MARKS = 100_000;

/**
 * The link counters worker (an entrypoint of the build): in a compiled binary it is found by
 * its path under src/, otherwise next to the observe module.
 */
const COUNTERS_WORKER = import.meta.url.includes("/$bunfs/")
  ? "./observe/counters-worker.ts"
  : new URL("../observe/counters-worker.ts", import.meta.url).href;

/** Is etcd there? A fresh client per probe: a long-lived one may sit in its reconnect backoff. */
function etcdProbe(conf: NetConf): () => Promise<string | undefined> {
  let last: { at: number; problem: string | undefined } | undefined;
  let running: Promise<string | undefined> | undefined;
  return () => {
    if (last && Date.now() - last.at < PROBE_REUSE_MS) return Promise.resolve(last.problem);
    running ??= (async () => {
      let client: ReturnType<typeof openEtcd> | undefined;
      try {
        client = openEtcd(conf, { callTimeoutMs: PROBE_MS });
        await client.maintenance.status();
        return undefined;
      } catch (err) {
        return `etcd is not reachable: ${describeEtcdError(err, conf, client)}`;
      } finally {
        client?.close();
      }
    })().then((problem) => {
      last = { at: Date.now(), problem };
      running = undefined;
      return problem;
    });
    return running;
  };
}

/** Hands the observer the agent's view of this node; returns the agent. */
export function bindObserver(observer: Observer, agent: NodeAgent, conf: NetConf, log: Logger): NodeAgent {
  const marks = new Map<string, string>();
  const mark = (link: string): string => {
    let m = marks.get(link);
    if (m === undefined) {
      if (marks.size >= MAX_MARKS) marks.clear();
      m = markOf(link);
      marks.set(link, m);
    }
    return m;
  };
  const cache = () => {
    try {
      return agent.pods.cache(conf);
    } catch {
      return undefined; // no way to the API server in this config (logged at start)
    }
  };
  const cached = (pod: string) => {
    const i = pod.indexOf("/");
    return cache()?.get(pod.slice(0, i), pod.slice(i + 1));
  };
  const probe = etcdProbe(conf);
  const counters = new WorkerReader(COUNTERS_WORKER, inThreadReader(listLinkCounters), log);
  observer.bind({
    node: nodeName(conf, process.env).name,
    view: { containers: () => [...agent.state.entries()].map(([, c]) => c), mark },
    kernel: {
      readCounters: counters.read,
      ifaces: (netns) => {
        const v = inspect(netns);
        return new Map(
          v.all.map((l) => [
            l.name,
            {
              mac: l.mac,
              alias: l.alias,
              ips: (v.addrs.get(l.index) ?? []).filter((a) => a.scope !== "link").map((a) => a.address),
            },
          ]),
        );
      },
      results: netlinkRequestResults,
      close: () => counters.close(),
    },
    api: () => {
      try {
        return agent.pods.reader(conf);
      } catch {
        return undefined;
      }
    },
    uidOf: (pod) => cached(pod)?.uid || undefined,
    // The network-status writer patches on top of what the watch brought: no read per write.
    cachedPod: (pod) => {
      const p = cached(pod);
      return p?.resourceVersion
        ? { annotations: p.annotations, resourceVersion: p.resourceVersion }
        : undefined;
    },
    ready: async () => {
      const problems: string[] = [];
      const c = cache();
      if (!c) problems.push("no pod cache: the agent has no way to the Kubernetes API (see its log)");
      else if (!c.synced) problems.push("the pod cache has not listed this node's pods yet");
      const etcd = await probe();
      if (etcd) problems.push(etcd);
      return problems;
    },
    etcdResults: () => stats.results,
    kubeResults: () => kubeRequestResults,
  });
  return agent;
}
