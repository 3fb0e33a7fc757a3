// The original ratchet-cni scenario, played the way a container runtime plays it: the
// installed binary exec'd with CNI_* variables and the config on stdin. primary-pod and
// pair-pod (pod_specs/example.yaml) get in1/in2 over a veth on one node, then over a VXLAN
// tunnel across two simulated nodes; a ping crosses each link; `ratchet links` shows the
// topology. Everything it starts and creates is removed at the end, also on failure.
// Run by scripts/demo.sh (as root), which installs what is missing and builds first.
import { Etcd3 } from "etcd3";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startApiServer, type ApiServer } from "../test/support/apiserver.ts";

const REPO = join(import.meta.dir, "..");
const started = performance.now();
const tag = `rd${process.pid.toString(36).slice(-3)}`;
const work = mkdtempSync(join(tmpdir(), "ratchet-demo-"));
const cniBin = join(work, "cni-bin");
const outDir = join(REPO, "demo-out");
const namespaces: string[] = [];
let etcdProc: ReturnType<typeof Bun.spawn> | undefined;
let api: ApiServer | undefined;

const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const step = (s: string) => console.log(`\n${bold(`== ${s}`)}`);
const say = (s: string) => console.log(`   ${s}`);

async function sh(cmd: string[], stdin?: string, env?: Record<string, string>): Promise<string> {
  const p = Bun.spawn({
    cmd,
    stdin: stdin === undefined ? "ignore" : new TextEncoder().encode(stdin),
    stdout: "pipe",
    stderr: "pipe",
    ...(env ? { env } : {}),
  });
  const [out, err, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  if (code !== 0) throw new Error(`${cmd.join(" ")} failed (${code}): ${(out + err).trim()}`);
  return out;
}

async function freePort(): Promise<number> {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = s.port;
  s.stop(true);
  return port;
}

async function netns(name: string): Promise<string> {
  await sh(["ip", "netns", "add", name]);
  namespaces.push(name);
  await sh(["ip", "-n", name, "link", "set", "lo", "up"]);
  return `/var/run/netns/${name}`;
}

/** One CNI command through the installed plugin, exactly as a runtime runs it. */
async function cni(
  command: "ADD" | "DEL",
  conf: object,
  pod: string,
  containerId: string,
  ns: string,
): Promise<Record<string, unknown> | undefined> {
  const out = await sh([join(cniBin, "ratchet")], JSON.stringify(conf), {
    PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin",
    CNI_COMMAND: command,
    CNI_CONTAINERID: containerId,
    CNI_NETNS: ns,
    CNI_IFNAME: "eth0",
    CNI_PATH: `${cniBin}:/usr/lib/cni`,
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=${pod};K8S_POD_INFRA_CONTAINER_ID=${containerId}`,
  });
  return out.trim() ? (JSON.parse(out) as Record<string, unknown>) : undefined;
}

function describeResult(r: Record<string, unknown> | undefined): string {
  const ifaces = (r?.interfaces as Array<{ name: string; sandbox?: string }> | undefined) ?? [];
  const ips = (r?.ips as Array<{ interface?: number; address: string }> | undefined) ?? [];
  return ifaces
    .filter((i) => i.sandbox)
    .map((i) => {
      const n = ifaces.indexOf(i);
      return `${i.name} ${ips
        .filter((ip) => ip.interface === n)
        .map((ip) => ip.address)
        .join(" ")}`.trim();
    })
    .join(", ");
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, ms = 10_000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(50);
  }
}

async function iface(
  ns: string,
  name: string,
): Promise<{ kind: string; up: boolean; vni?: number; remote?: string } | undefined> {
  const out = await sh(["ip", "-n", ns, "-j", "-d", "link", "show", "dev", name]);
  const l = (
    JSON.parse(out) as Array<{
      flags?: string[];
      linkinfo?: { info_kind: string; info_data?: { id?: number; remote?: string } };
    }>
  )[0];
  return l
    ? {
        kind: l.linkinfo?.info_kind ?? "?",
        up: (l.flags ?? []).includes("UP"),
        ...(l.linkinfo?.info_data?.id
          ? { vni: l.linkinfo.info_data.id, remote: l.linkinfo.info_data.remote }
          : {}),
      }
    : undefined;
}

async function ping(fromNs: string, to: string): Promise<string> {
  const out = await sh(["ip", "netns", "exec", fromNs, "ping", "-c", "3", "-i", "0.2", "-W", "2", to]);
  return out.split("\n").find((l) => l.includes("packet loss")) ?? "ok";
}

function agentPids(): number[] {
  return readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        return readlinkSync(`/proc/${d}/fd/1`).startsWith(work);
      } catch {
        return false;
      }
    })
    .map(Number);
}

async function cleanup(): Promise<void> {
  for (const pid of agentPids()) {
    try {
      process.kill(pid, "SIGTERM");
    } catch {
      // gone
    }
  }
  for (const ns of namespaces.reverse()) await sh(["ip", "netns", "delete", ns]).catch(() => undefined);
  await api?.stop();
  etcdProc?.kill("SIGTERM");
  await etcdProc?.exited;
  rmSync(work, { recursive: true, force: true });
}

async function main(): Promise<void> {
  step("Installing ratchet into a CNI bin directory");
  await sh([join(REPO, "scripts", "install.sh"), cniBin]);
  say(
    `${cniBin}/ratchet and ratchet-child -> ratchet (${(await sh([join(cniBin, "ratchet"), "--version"])).trim()})`,
  );

  step("Starting a throwaway etcd and a stand-in Kubernetes API server");
  const [client, peer] = [await freePort(), await freePort()];
  const etcdUrl = `http://127.0.0.1:${client}`;
  etcdProc = Bun.spawn({
    cmd: [
      "etcd",
      "--name",
      "demo",
      "--data-dir",
      join(work, "etcd"),
      "--listen-client-urls",
      etcdUrl,
      "--advertise-client-urls",
      etcdUrl,
      "--listen-peer-urls",
      `http://127.0.0.1:${peer}`,
      "--initial-advertise-peer-urls",
      `http://127.0.0.1:${peer}`,
      "--initial-cluster",
      `demo=http://127.0.0.1:${peer}`,
    ],
    stdout: "ignore",
    stderr: "ignore",
  });
  await waitFor("etcd", async () => (await fetch(`${etcdUrl}/health`)).ok || undefined);
  say(`etcd ${etcdUrl}`);
  api = startApiServer({ podFiles: [join(REPO, "pod_specs", "example.yaml")], dir: work });
  const kubeconfig = api.writeKubeconfig(work, { auth: "token" });
  say(`API server ${api.url}, serving primary-pod and pair-pod from pod_specs/example.yaml`);

  step("Two simulated nodes: host namespaces joined by an underlay link (ul0)");
  const hostA = await netns(`${tag}-node-a`);
  const hostB = await netns(`${tag}-node-b`);
  await sh([
    "ip",
    "-n",
    `${tag}-node-a`,
    "link",
    "add",
    "ul0",
    "type",
    "veth",
    "peer",
    "name",
    "ul0",
    "netns",
    `${tag}-node-b`,
  ]);
  await sh(["ip", "-n", `${tag}-node-a`, "addr", "add", "10.254.0.1/24", "dev", "ul0"]);
  await sh(["ip", "-n", `${tag}-node-b`, "addr", "add", "10.254.0.2/24", "dev", "ul0"]);
  await sh(["ip", "-n", `${tag}-node-a`, "link", "set", "ul0", "up"]);
  await sh(["ip", "-n", `${tag}-node-b`, "link", "set", "ul0", "up"]);
  say("node-a 10.254.0.1, node-b 10.254.0.2");
  // node-a's agent serves /metrics, /healthz and /readyz here.
  const metricsA = `127.0.0.1:${await freePort()}`;
  const conf = (node: "a" | "b", host: string) => ({
    cniVersion: "1.0.0",
    name: "ratchet-demo",
    type: "ratchet",
    etcd_endpoints: [etcdUrl],
    child_path: join(cniBin, "ratchet-child"),
    parent_interface: "ul0",
    parent_address: "",
    host_netns: host,
    kubeconfig,
    node_name: `node-${node}`,
    child_socket: join(work, `node-${node}`, "child.sock"),
    log_file: join(work, `node-${node}`, "ratchet.log"),
    delegate: { type: "loopback" },
    boot_network: { type: "loopback" },
    ...(node === "a" ? { metrics_address: metricsA } : {}),
  });
  const confA = conf("a", hostA);
  const confB = conf("b", hostB);
  writeFileSync(join(work, "10-ratchet.conf"), JSON.stringify(confA));

  // As the scheduler does before the kubelet runs a pod: each agent watches its node's pods.
  const schedule = (pod: string, node: "a" | "b") => api?.bindPod("default", pod, `node-${node}`);

  step("One node: primary-pod and pair-pod on node-a");
  schedule("primary-pod", "a");
  schedule("pair-pod", "a");
  const p1 = await netns(`${tag}-primary-1`);
  const q1 = await netns(`${tag}-pair-1`);
  let r = await cni("ADD", confA, "primary-pod", "primary-1", p1);
  say(`ADD primary-pod -> ${describeResult(r) || "(boot network only: its peer is not there yet)"}`);
  r = await cni("ADD", confA, "pair-pod", "pair-1", q1);
  say(`ADD pair-pod    -> ${describeResult(r)}`);
  const v1 = await iface(`${tag}-primary-1`, "in1");
  say(
    `primary-pod in1 is a ${v1?.kind}; ping 192.168.2.101 from primary-pod: ${await ping(`${tag}-primary-1`, "192.168.2.101")}`,
  );
  console.log(await sh([join(cniBin, "ratchet"), "links", "--config", join(work, "10-ratchet.conf")]));
  await showObservability(metricsA);
  await cni("DEL", confA, "pair-pod", "pair-1", q1);
  await cni("DEL", confA, "primary-pod", "primary-1", p1);
  say("DEL both: links and records removed");

  step("Two nodes: primary-pod on node-a, pair-pod on node-b");
  schedule("pair-pod", "b");
  const p2 = await netns(`${tag}-primary-2`);
  const q2 = await netns(`${tag}-pair-2`);
  r = await cni("ADD", confA, "primary-pod", "primary-2", p2);
  say(
    `ADD primary-pod on node-a -> ${describeResult(r) || "(boot network only: its peer is not there yet)"}`,
  );
  r = await cni("ADD", confB, "pair-pod", "pair-2", q2);
  say(`ADD pair-pod on node-b    -> ${describeResult(r)}`);
  const a = await waitFor("node-a's end of the tunnel", () => iface(`${tag}-primary-2`, "in1"));
  const b = await iface(`${tag}-pair-2`, "in2");
  say(
    `in1 on node-a: ${a.kind} vni ${a.vni} remote ${a.remote}; in2 on node-b: ${b?.kind} vni ${b?.vni} remote ${b?.remote}`,
  );
  say(`ping 192.168.2.100 from pair-pod: ${await ping(`${tag}-pair-2`, "192.168.2.100")}`);

  step("Live: the link's rate limited, then taken down and up, by editing primary-pod's annotation");
  // As `kubectl annotate --overwrite` would: the same link as the labels, plus what changes.
  const annotate = (extra: Record<string, unknown>) => {
    const pod = api?.getPod("default", "primary-pod");
    if (!pod || !api) throw new Error("primary-pod is gone from the API server");
    const declared = [
      {
        peer: "pair-pod",
        local_ifname: "in1",
        peer_ifname: "in2",
        local_ip: "192.168.2.100/24",
        peer_ip: "192.168.2.101/24",
        ...extra,
      },
    ];
    const annotations = { ...pod.metadata.annotations, "ratchet/links": JSON.stringify(declared) };
    api.putPod({ ...pod, metadata: { ...pod.metadata, annotations } });
  };
  const rate = async (ns: string, dev: string) => {
    const q = JSON.parse(await sh(["tc", "-n", ns, "-j", "qdisc", "show", "dev", dev])) as Array<{
      kind: string;
      root?: boolean;
      options?: { rate?: number };
    }>;
    const root = q.find((x) => x.root);
    return root?.kind === "tbf" ? `tbf ${((root.options?.rate ?? 0) * 8) / 1000} kbit/s` : root?.kind;
  };
  annotate({ netem: { rate_kbit: 1000 } });
  await waitFor("the rate on both ends", async () =>
    (await rate(`${tag}-primary-2`, "in1")) === "tbf 1000 kbit/s" &&
    (await rate(`${tag}-pair-2`, "in2")) === "tbf 1000 kbit/s"
      ? true
      : undefined,
  );
  say(
    `netem {"rate_kbit": 1000}: in1 on node-a ${await rate(`${tag}-primary-2`, "in1")}, in2 on node-b ${await rate(`${tag}-pair-2`, "in2")}`,
  );
  annotate({ netem: { rate_kbit: 1000 }, state: "down" });
  await waitFor("both ends down", async () =>
    (await iface(`${tag}-pair-2`, "in2"))?.up === false ? true : undefined,
  );
  say(
    `state "down": in2 on node-b is down; ping: ${await ping(`${tag}-pair-2`, "192.168.2.100").catch(() => "no answer")}`,
  );
  annotate({ netem: { rate_kbit: 1000 }, state: "up" });
  await waitFor("both ends up", async () => ((await iface(`${tag}-pair-2`, "in2"))?.up ? true : undefined));
  say(`state "up" again: ping 192.168.2.100 from pair-pod: ${await ping(`${tag}-pair-2`, "192.168.2.100")}`);
  console.log(await sh([join(cniBin, "ratchet"), "links", "--config", join(work, "10-ratchet.conf")]));
  const dot = await sh([
    join(cniBin, "ratchet"),
    "links",
    "--config",
    join(work, "10-ratchet.conf"),
    "--output",
    "dot",
  ]);
  if (Bun.which("dot")) {
    mkdirSync(outDir, { recursive: true });
    await sh(["dot", "-Tsvg", "-o", join(outDir, "topology.svg")], dot);
    await sh(["dot", "-Tpng", "-o", join(outDir, "topology.png")], dot);
    say(`topology picture: ${join("demo-out", "topology.svg")} and topology.png`);
  } else {
    say("graphviz (dot) is not installed: the table above is the topology");
  }
  await cni("DEL", confB, "pair-pod", "pair-2", q2);
  await cni("DEL", confA, "primary-pod", "primary-2", p2);
  const etcd = new Etcd3({ hosts: etcdUrl });
  const left = (await etcd.getAll().prefix("/ratchet/v1/").keys()).filter((k) => !k.endsWith("/vni-next"));
  etcd.close();
  if (left.length > 0) throw new Error(`etcd still holds ${left.join(", ")}`);
  say("DEL both: tunnel ends and records removed");
}

/** A few lines of node-a's /metrics, and what the pods' objects now tell. */
async function showObservability(address: string): Promise<void> {
  const text = await (await fetch(`http://${address}/metrics`)).text();
  const wanted = [
    /^ratchet_link_ends\{state="(up|waiting)"\}/,
    /^ratchet_link_(up|transmit_bytes_total)\{.*interface="in1"/,
    /^ratchet_cni_requests_total\{/,
  ];
  say(`node-a's agent at http://${address}/metrics (${text.split("\n").length} lines), a few of them:`);
  for (const line of text.split("\n")) if (wanted.some((w) => w.test(line))) say(`  ${line}`);
  const ready = await fetch(`http://${address}/readyz`);
  say(`/readyz: ${ready.status} ${(await ready.text()).trim()}`);
  // Written in the background once the links are built: wait for primary-pod's in1.
  const status = await waitFor("primary-pod's network-status", async () => {
    const pod = api?.getPod("default", "primary-pod");
    const text = pod?.metadata.annotations?.["k8s.v1.cni.cncf.io/network-status"];
    return text?.includes('"in1"') ? text : undefined;
  });
  const entries = status
    ? (JSON.parse(status) as Array<{ name: string; interface: string; ips: string[] }>)
    : [];
  say(
    `primary-pod's network-status: ${entries.map((e) => `${e.name} ${e.interface} ${e.ips.join(" ")}`).join("; ")}`,
  );
  const reasons = (api?.events ?? []).map(
    (e) => `${(e.involvedObject as { name: string }).name}: ${e.reason}`,
  );
  say(`Events: ${[...new Set(reasons)].join(", ")}`);
}

let failed = false;
try {
  await main();
} catch (err) {
  failed = true;
  console.error(`\ndemo failed: ${(err as Error).message}`);
  for (const node of ["a", "b"]) {
    const log = join(work, `node-${node}`, "ratchet.log");
    if (existsSync(log))
      console.error(
        `--- node-${node} log (last lines)\n${(await Bun.file(log).text()).split("\n").slice(-8).join("\n")}`,
      );
  }
} finally {
  step("Tearing down");
  await cleanup();
  const leftNs = (await sh(["ip", "netns", "list"])).split("\n").filter((l) => l.startsWith(tag));
  const leftProcs = agentPids();
  if (leftNs.length || leftProcs.length || existsSync(work)) {
    failed = true;
    console.error(
      `left behind: ${[...leftNs, ...leftProcs.map((p) => `pid ${p}`), ...(existsSync(work) ? [work] : [])].join(", ")}`,
    );
  } else {
    say("no namespaces, links, processes or temp files left");
  }
  console.log(`\n${failed ? "FAILED" : "done"} in ${((performance.now() - started) / 1000).toFixed(1)} s`);
}
process.exit(failed ? 1 : 0);
