// The node agent (ratchet-child): one per node, serves the plugin on a unix socket, holds the
// etcd and Kubernetes clients and owns every link change on its node. This file: its modes
// (serve, --check, --pod) and its lifecycle (socket lock, takeover, drain, idle exit).
import { mkdirSync } from "node:fs";
import { loadConfigFile } from "../cni/config-file.ts";
import { dirname } from "node:path";
import { etcdEndpoints, parseNetConf, type NetConf } from "../cni/config.ts";
import { CniError, Code, toCniError } from "../cni/errors.ts";
import { option } from "../argv.ts";
import { Logger } from "../log.ts";
import { BUILD_ID, hello } from "../version.ts";
import { ObserveServer } from "../observe/http.ts";
import { Observer } from "../observe/observer.ts";
import type { NodeAgent } from "./agent.ts";
import { SocketLock } from "./lock.ts";
import { missingVtep } from "./vtep.ts";
import { requestKey, Server } from "./server.ts";

/**
 * `ratchet-child --check`: can this node reach etcd with this config (the exit code), and
 * does it have a VXLAN endpoint (`vxlan`: what is missing, and what that means)?
 */
async function check(conf: NetConf): Promise<number> {
  const { openEtcd, describeEtcdError } = await import("../store/etcd.ts");
  const vxlan = await vtepCheck(conf);
  let client: ReturnType<typeof openEtcd> | undefined;
  try {
    // Inside the try: a config openEtcd refuses (unreadable file, http:// with TLS files) is a failed check too.
    client = openEtcd(conf);
    const status = await client.maintenance.status();
    const etcd = { ok: true, endpoints: etcdEndpoints(conf), version: status.version };
    process.stdout.write(`${JSON.stringify({ etcd, vxlan })}\n`);
    return 0;
  } catch (err) {
    const etcd = { ok: false, endpoints: etcdEndpoints(conf), error: describeEtcdError(err, conf, client) };
    process.stdout.write(`${JSON.stringify({ etcd, vxlan })}\n`);
    return 1;
  } finally {
    client?.close();
  }
}

/** This node's VTEP as the agent will find it, or the problem in plain words. */
async function vtepCheck(conf: NetConf): Promise<{ ok: boolean; vtep?: string; problem?: string }> {
  const missing = missingVtep(conf);
  if (missing) return { ok: false, problem: missing };
  if (conf.parent_address) return { ok: true, vtep: conf.parent_address };
  const iface = conf.parent_interface as string;
  try {
    const { firstIpv4Address } = await import("../netlink/addr.ts");
    const addr = firstIpv4Address(iface, conf.host_netns);
    if (addr) return { ok: true, vtep: addr };
    return {
      ok: false,
      problem: `parent_interface ${JSON.stringify(iface)} has no IPv4 address: set parent_address or add one`,
    };
  } catch (err) {
    return { ok: false, problem: `parent_interface ${JSON.stringify(iface)}: ${(err as Error).message}` };
  }
}

/**
 * `ratchet-child --pod NAMESPACE/NAME --config FILE`: reads the pod as the agent would and
 * prints its classification ({pod, eligible, links}); on error the CNI error JSON, exit 1.
 */
async function classifyPod(
  conf: NetConf,
  ref: string,
  env: Record<string, string | undefined>,
): Promise<number> {
  try {
    const slash = ref.indexOf("/");
    if (slash <= 0 || slash === ref.length - 1)
      throw new CniError(Code.InvalidPodSpec, `--pod ${JSON.stringify(ref)}: expected NAMESPACE/NAME`);
    const [{ PodReader }, { podLinks }] = await Promise.all([
      import("../pods/kube.ts"),
      import("../pods/podspec.ts"),
    ]);
    using reader = PodReader.fromConfig(conf, env);
    const pod = await reader.readPod(ref.slice(0, slash), ref.slice(slash + 1), 10_000);
    const { eligible, links } = podLinks(pod, { defaultPrefix: conf.default_prefix });
    process.stdout.write(`${JSON.stringify({ pod: `${pod.namespace}/${pod.name}`, eligible, links })}\n`);
    return 0;
  } catch (err) {
    process.stdout.write(`${JSON.stringify(toCniError(err).toJSON(conf.cniVersion))}\n`);
    return 1;
  }
}

/**
 * Serves the parent on the child socket until idle (when spawned on demand), drained by a
 * newer binary, or signalled. In the foreground it logs on stderr and never idles out.
 */
async function serve(conf: NetConf, opts: { foreground: boolean; takeover: boolean }): Promise<number> {
  const log = new Logger("child", conf.log_level, opts.foreground ? undefined : conf.log_file);
  mkdirSync(dirname(conf.child_socket), { recursive: true, mode: 0o700 });
  const lockPath = `${conf.child_socket}.lock`;
  let lock = await SocketLock.acquire(lockPath, opts.takeover ? 15_000 : 0);
  if (!lock && opts.foreground) {
    // A foreground agent (a DaemonSet's) takes over from one a plugin started on demand:
    // that one finishes its work and exits, then the lock is ours.
    log.info("another node agent serves this socket: asking it to hand over", { socket: conf.child_socket });
    const { requestDrain } = await import("../rpc/connection.ts");
    await requestDrain(conf.child_socket).catch((err: unknown) =>
      log.warn("could not ask the other agent to drain", { error: (err as Error).message }),
    );
    lock = await SocketLock.acquire(lockPath, 30_000);
    if (!lock) {
      log.error("the other node agent did not hand over within 30 s", { socket: conf.child_socket });
      return 1;
    }
  }
  if (!lock) {
    // Another child serves this socket (several parents started one at once): nothing to do.
    log.debug("another node agent holds the socket lock; exiting", { socket: conf.child_socket });
    return 0;
  }
  let finish: (code: number) => void = () => undefined;
  const done = new Promise<number>((r) => {
    finish = r;
  });
  let server: Server | undefined;
  const shutdown = async (why: string) => {
    if (!server || server.draining) return;
    server.draining = true;
    log.info("node agent stopping", { why, pid: process.pid });
    server.stopListening();
    await server.idle();
    finish(0);
  };
  // Metrics, health, Events and the network-status annotation (src/observe).
  const observer = new Observer(log, { networkStatus: conf.network_status_annotation });
  const http = conf.metrics_address ? new ObserveServer(conf.metrics_address, observer, log) : undefined;
  // Listen first, load the etcd and Kubernetes clients meanwhile: the plugin that started
  // us connects (and says hello) while they load, and its real request waits for them.
  const loading = import("./agent.ts").then(({ NodeAgent, agentFiles, bindObserver }) =>
    bindObserver(
      observer,
      new NodeAgent(log, () => void shutdown("drain"), agentFiles(conf), observer),
      conf,
      log,
    ),
  );
  server = new Server({
    socket: conf.child_socket,
    log,
    handle: observer.track(async (req, signal, interim) =>
      req.method === "hello"
        ? hello()
        : (await loading).handle(req.method, req.params, { deadline: req.deadline, signal, interim }),
    ),
    keyOf: requestKey,
  });
  server.listen();
  const agent: NodeAgent = await loading;
  log.info("node agent serving", {
    socket: conf.child_socket,
    pid: process.pid,
    build: BUILD_ID,
    foreground: opts.foreground,
  });
  // Watch this node's pods and take up its links (reconcile, watch) now, not at the first request.
  agent.serialize = (key, task) => (server ? server.serialize(key, task) : task());
  agent.watchPods(conf);
  const missing = missingVtep(conf);
  if (missing) log.warn(missing);
  if (conf.etcd_endpoints || conf.etcd_host) agent.warm(conf);

  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));
  let timer: Timer | undefined;
  if (!opts.foreground) {
    const idleMs = conf.child_idle_seconds * 1000;
    timer = setInterval(
      () => {
        // Never idle out while this node has ratchet pods (a peer may come and need our end).
        if (server && !server.busy && !agent.pendingWork && Date.now() - server.lastActivity >= idleMs)
          void shutdown(`idle for ${conf.child_idle_seconds} s`);
      },
      Math.min(Math.max(idleMs / 4, 100), 10_000),
    );
  }
  const code = await done;
  clearInterval(timer);
  http?.stop();
  await observer.close();
  agent.close();
  lock.release();
  log.close();
  return code;
}

export async function runChild(args: string[]): Promise<number> {
  const spawned = args.includes("--spawned");
  let conf: NetConf;
  try {
    if (spawned) {
      conf = parseNetConf(JSON.parse(await Bun.stdin.text()));
    } else {
      const configPath = option(args, "--config");
      if (!configPath) throw new CniError(Code.InvalidConfig, "--config FILE is required");
      conf = loadConfigFile(configPath);
    }
  } catch (err) {
    process.stderr.write(`ratchet-child: ${toCniError(err).message}\n`);
    return 2;
  }
  if (args.includes("--check")) return check(conf);
  const pod = option(args, "--pod");
  if (pod !== undefined) return classifyPod(conf, pod, process.env);
  return serve(conf, { foreground: !spawned, takeover: args.includes("--takeover") });
}
