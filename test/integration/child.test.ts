// The node agent's lifecycle, driven through the installed binary as a runtime drives it.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { build } from "../../scripts/build.ts";
import { cni } from "../support/cni.ts";
import { alive, childPids, killChildren, rpc, waitFor } from "../support/child.ts";
import { hiddenCheckout, installedBin, run, tempDir } from "../support/env.ts";
import { makeNetns } from "../support/netns.ts";
import { startApiServer } from "../support/apiserver.ts";

const dirs: Array<{ path: string; [Symbol.dispose](): void }> = [];
// The pods these tests add: plain (non-ratchet) pods the agent looks up through the API.
// Scheduled to the node the agents watch (node_name below).
const api = startApiServer({ node: "child-test-node" });
for (const name of [
  "plain-pod",
  "plain-pod-2",
  "after-wedge",
  "after-upgrade",
  "old-parent",
  ...Array.from({ length: 20 }, (_, i) => `burst-${i}`),
]) {
  api.putPod({ kind: "Pod", metadata: { name, namespace: "default", labels: { app: "plain" } }, spec: {} });
}
const kubeDir = tempDir("ratchet-child-kube-");
const kubeconfig = api.writeKubeconfig(kubeDir.path, { auth: "token" });
afterAll(async () => {
  for (const d of dirs) {
    await killChildren(join(d.path, "ratchet.log"));
    d[Symbol.dispose]();
  }
  await api.stop();
  kubeDir[Symbol.dispose]();
});

/** A fresh node: its own socket, log and idle time; loopback as delegate. */
function node(extra: Record<string, unknown> = {}) {
  const dir = tempDir("ratchet-child-");
  dirs.push(dir);
  const log = join(dir.path, "ratchet.log");
  const socket = join(dir.path, "run", "child.sock");
  const conf = {
    cniVersion: "1.0.0",
    name: "child-test",
    type: "ratchet",
    etcd_host: "127.0.0.1",
    log_file: log,
    child_socket: socket,
    child_idle_seconds: 60,
    kubeconfig,
    node_name: "child-test-node",
    delegate: { type: "loopback" },
    ...extra,
  };
  return { dir: dir.path, log, socket, conf };
}

/** `ratchet --mode=child --config FILE` for node `n`, as a DaemonSet runs it. */
function foregroundAgent(n: ReturnType<typeof node>) {
  const confFile = join(n.dir, "net.conf");
  writeFileSync(confFile, JSON.stringify(n.conf));
  return Bun.spawn({
    cmd: hiddenCheckout([installedBin(), "--mode=child", "--config", confFile]),
    stdout: "pipe",
    stderr: "pipe",
  });
}

const podArgs = (name: string) =>
  `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=${name};K8S_POD_INFRA_CONTAINER_ID=x`;

async function add(n: ReturnType<typeof node>, netns: string, pod = "plain-pod", bin?: string) {
  return cni({
    command: "ADD",
    conf: n.conf,
    containerId: `c-${pod}`,
    netns,
    ifname: "lo",
    args: podArgs(pod),
    ...(bin ? { bin } : {}),
  });
}

const servingLines = (log: string) =>
  existsSync(log)
    ? readFileSync(log, "utf8")
        .split("\n")
        .filter((l) => l.includes('"node agent serving"'))
    : [];

describe("node agent", () => {
  test("starts on demand, detached, with a 0700 dir and a 0600 socket; later calls reuse it", async () => {
    const n = node();
    await using ns = await makeNetns();
    const first = await add(n, ns.path);
    expect(first.stdout).toContain('"interfaces"');
    expect(first.code).toBe(0);
    expect(statSync(join(n.dir, "run")).mode & 0o777).toBe(0o700);
    expect(statSync(n.socket).mode & 0o777).toBe(0o600);
    const pids = childPids(n.log);
    expect(pids).toHaveLength(1);
    // Its own session: the runtime killing the plugin's process group leaves it alone.
    const stat = readFileSync(`/proc/${pids[0]}/stat`, "utf8")
      .slice(readFileSync(`/proc/${pids[0]}/stat`, "utf8").lastIndexOf(")") + 2)
      .split(" ");
    expect(Number(stat[3])).toBe(pids[0] as number); // session id == its pid
    const hello = await rpc(n.socket, "hello");
    expect(hello.ok).toBe(true);
    expect(hello.result?.pid).toBe(pids[0]);

    expect((await add(n, ns.path, "plain-pod-2")).code).toBe(0);
    expect(childPids(n.log)).toEqual(pids);
  });

  test("another user cannot talk to the agent: connect is refused", async () => {
    const n = node();
    await using ns = await makeNetns();
    expect((await add(n, ns.path)).code).toBe(0);
    // As root the socket answers; as nobody (uid 65534) the kernel refuses the connect.
    const script =
      `require("net").connect(process.argv[1]).on("connect", () => { console.log("connected"); ` +
      `process.exit(0); }).on("error", (e) => { console.log(e.code); process.exit(3); });`;
    const asRoot = await run(["node", "-e", script, n.socket]);
    expect(asRoot.stdout.trim()).toBe("connected");
    const proc = Bun.spawn({
      cmd: ["node", "-e", script, n.socket],
      uid: 65534,
      gid: 65534,
      stdout: "pipe",
      stderr: "pipe",
    });
    const out = await new Response(proc.stdout).text();
    expect(await proc.exited).toBe(3);
    expect(out.trim()).toBe("EACCES");
  });

  test("a pod without K8S_POD_* args never starts the agent", async () => {
    const n = node();
    await using ns = await makeNetns();
    const r = await cni({ command: "ADD", conf: n.conf, containerId: "nok8s", netns: ns.path, ifname: "lo" });
    expect(r.code).toBe(0);
    expect(existsSync(n.socket)).toBe(false);
    expect(childPids(n.log)).toEqual([]);
  });

  test("20 parents at once on a cold node: every call succeeds, one agent serves", async () => {
    const n = node();
    await using ns = await makeNetns();
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => add(n, ns.path, `burst-${i}`)));
    expect(results.map((r) => r.code)).toEqual(Array(20).fill(0));
    await waitFor("losers of the lock race to exit", () => childPids(n.log).length === 1);
    expect(servingLines(n.log)).toHaveLength(1);
  });

  test("kill -9 leaves a stale socket; the next call starts a new agent", async () => {
    const n = node();
    await using ns = await makeNetns();
    expect((await add(n, ns.path)).code).toBe(0);
    const [pid] = childPids(n.log);
    process.kill(pid as number, "SIGKILL");
    await waitFor("the agent to die", () => !alive(pid as number));
    expect(existsSync(n.socket)).toBe(true); // stale
    const again = await add(n, ns.path);
    expect(again.code).toBe(0);
    const now = childPids(n.log);
    expect(now).toHaveLength(1);
    expect(now[0]).not.toBe(pid);
  });

  test("a socket path left as a plain file is replaced", async () => {
    const n = node();
    await using ns = await makeNetns();
    await run(["mkdir", "-p", join(n.dir, "run")]);
    writeFileSync(n.socket, "junk");
    expect((await add(n, ns.path)).code).toBe(0);
    expect(statSync(n.socket).isSocket()).toBe(true);
  });

  test("exits after the idle period", async () => {
    const n = node({ child_idle_seconds: 1 });
    await using ns = await makeNetns();
    expect((await add(n, ns.path)).code).toBe(0);
    const [pid] = childPids(n.log);
    await waitFor("the idle agent to exit", () => !alive(pid as number), 8000);
    expect(existsSync(n.socket)).toBe(false);
    expect(readFileSync(n.log, "utf8")).toContain("idle for 1 s");
  });

  test("a wedged agent (stopped) makes the call fail with code 11 in bounded time", async () => {
    const n = node();
    await using ns = await makeNetns();
    expect((await add(n, ns.path)).code).toBe(0);
    const [pid] = childPids(n.log);
    process.kill(pid as number, "SIGSTOP");
    try {
      const t0 = performance.now();
      const r = await add(n, ns.path, "after-wedge");
      expect(r.code).toBe(1);
      expect((r.json as { code: number }).code).toBe(11);
      expect(performance.now() - t0).toBeLessThan(15_000);
    } finally {
      process.kill(pid as number, "SIGCONT");
    }
  });

  test("a newer binary drains the older agent and takes over", async () => {
    const n = node();
    await using ns = await makeNetns();
    expect((await add(n, ns.path)).code).toBe(0);
    const [oldPid] = childPids(n.log);
    const oldHello = await rpc(n.socket, "hello");

    // A later build of the same code, installed beside the first.
    using newer = tempDir("ratchet-newer-");
    const bin = await build(join(newer.path, "ratchet"));
    await run(["ln", "-s", "ratchet", join(newer.path, "ratchet-child")]);
    const r = await add(n, ns.path, "after-upgrade", bin);
    expect(r.code).toBe(0);
    await waitFor("the old agent to exit", () => !alive(oldPid as number));
    const hello = await rpc(n.socket, "hello");
    expect(hello.result?.buildId).not.toBe(oldHello.result?.buildId);
    expect(hello.result?.pid).not.toBe(oldPid);
    expect(readFileSync(n.log, "utf8")).toContain("draining: a newer node agent takes over");

    // The older parent keeps using the newer agent rather than fighting over it.
    expect((await add(n, ns.path, "old-parent")).code).toBe(0);
    expect((await rpc(n.socket, "hello")).result?.pid).toBe(hello.result?.pid);
    await killChildren(n.log);
  });

  test("a foreground agent takes over from one started on demand", async () => {
    const n = node();
    await using ns = await makeNetns();
    expect((await add(n, ns.path)).code).toBe(0);
    const [onDemand] = childPids(n.log);
    const proc = foregroundAgent(n);
    try {
      await waitFor("the on-demand agent to hand over", () => !alive(onDemand as number), 10_000);
      await waitFor(
        "the foreground agent to serve",
        async () => (await rpc(n.socket, "hello").catch(() => undefined))?.result?.pid !== undefined,
      );
      const hello = await rpc(n.socket, "hello");
      expect(hello.result?.pid).not.toBe(onDemand);
      expect((await add(n, ns.path, "plain-pod-2")).code).toBe(0);
      expect(proc.exitCode).toBeNull();
    } finally {
      proc.kill("SIGTERM");
      await proc.exited;
    }
    expect(await new Response(proc.stderr).text()).toContain("asking it to hand over");
  });

  test("--mode=child --config runs in the foreground, logs on stderr, stops on SIGTERM", async () => {
    const n = node({ child_idle_seconds: 1 });
    const proc = foregroundAgent(n);
    try {
      await waitFor("the socket", () => existsSync(n.socket));
      expect((await rpc(n.socket, "hello")).ok).toBe(true);
      // Never idles out in the foreground, whatever child_idle_seconds says.
      await Bun.sleep(1500);
      expect(proc.exitCode).toBeNull();
    } finally {
      proc.kill("SIGTERM");
    }
    expect(await proc.exited).toBe(0);
    const stderr = await new Response(proc.stderr).text();
    expect(stderr).toContain('"node agent serving"');
    expect(stderr).toContain('"why":"SIGTERM"');
    expect(await new Response(proc.stdout).text()).toBe("");
  });
});
