// One containerd for the tests: its own root, state, socket and config in a temp dir (never
// the system's), run inside a node's host netns (so the CNI plugins it execs, the bridge
// they make and the pods' host ends live there), with the CRI plugin configured for this
// machine: no CAP_SYS_RESOURCE (restrict_oom_score_adj), pod netns under its state dir, a
// pause image imported from a tarball. Dispose stops every sandbox, containerd, its shims
// and their processes, unmounts whatever it left under its dir and removes the dir.
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { alive, waitFor } from "../child.ts";
import { run } from "../env.ts";
import { CriClient } from "./client.ts";
import { PAUSE_IMAGE, pauseImageTar } from "./pause-image.ts";

export interface ContainerdOptions {
  /** An empty directory for everything of this instance. */
  dir: string;
  /** The netns containerd runs in (the node's host netns). */
  netns: string;
  cniBinDir: string;
  cniConfDir: string;
}

const CRI = `plugins."io.containerd.grpc.v1.cri"`;

function toml(o: ContainerdOptions, paths: { root: string; state: string; socket: string }): string {
  const q = JSON.stringify;
  return `# written by the tests for one throwaway containerd
version = 2
root = ${q(paths.root)}
state = ${q(paths.state)}
# Plugins that would touch the machine (/opt/containerd) or are of no use here.
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = ${q(paths.socket)}

[ttrpc]
  address = ${q(`${paths.socket}.ttrpc`)}

[debug]
  level = "info"

[${CRI}]
  sandbox_image = ${q(PAUSE_IMAGE)}
  # These machines have no CAP_SYS_RESOURCE: never lower a process's OOM score.
  restrict_oom_score_adj = true
  disable_apparmor = true
  # No cgroup path in the spec: runc puts each sandbox in <its own cgroup>/<id> and removes it,
  # instead of a /k8s.io/<id> tree at the top of every hierarchy of the machine.
  disable_cgroup = true
  # Pod netns under the state dir, not the machine's /var/run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_tls_streaming = false

  [${CRI}.cni]
    bin_dir = ${q(o.cniBinDir)}
    conf_dir = ${q(o.cniConfDir)}
    max_conf_num = 1

  [${CRI}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [${CRI}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [${CRI}.containerd.runtimes.runc.options]
        Root = ${q(join(paths.state, "runc"))}
        SystemdCgroup = false
`;
}

/** Processes whose command line contains every one of `parts` (NUL-separated argv). */
function pidsWith(parts: string[]): number[] {
  const pids: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const argv = readFileSync(`/proc/${d}/cmdline`, "utf8").split("\0");
      if (parts.every((p) => argv.includes(p)) && alive(Number(d))) pids.push(Number(d));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/** Live children of a process (by PPid). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const m = /^PPid:\s+(\d+)$/m.exec(readFileSync(`/proc/${d}/status`, "utf8"));
      if (m && Number(m[1]) === pid && alive(Number(d))) out.push(Number(d));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** The cgroups runc made for a sandbox process: <its parent's cgroup>/<sandbox id>, per hierarchy. */
function sandboxCgroups(pid: number): string[] {
  try {
    const paths = readFileSync(`/proc/${pid}/cgroup`, "utf8")
      .split("\n")
      .map((l) => l.split(":")[2] ?? "")
      .filter((p) => /\/[0-9a-f]{64}$/.test(p));
    return [...new Set(paths)];
  } catch {
    return [];
  }
}

function kill(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** Mount points at or below dir, deepest first (from this process's mount table). */
function mountsUnder(dir: string): string[] {
  const octal = (s: string) =>
    s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => octal(l.split(" ")[4] ?? ""))
    .filter((m) => m === dir || m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
}

export class Containerd implements AsyncDisposable {
  readonly root: string;
  readonly state: string;
  readonly socket: string;
  readonly config: string;
  readonly logFile: string;
  private proc: ReturnType<typeof Bun.spawn> | undefined;
  private client: CriClient | undefined;
  private disposed = false;

  constructor(readonly opts: ContainerdOptions) {
    this.root = join(opts.dir, "root");
    this.state = join(opts.dir, "state");
    this.socket = join(opts.dir, "containerd.sock");
    this.config = join(opts.dir, "config.toml");
    this.logFile = join(opts.dir, "containerd.log");
    // unix socket paths are limited to 107 bytes (plus the ".ttrpc" suffix).
    if (this.socket.length + 6 > 107) throw new Error(`containerd socket path too long: ${this.socket}`);
    mkdirSync(opts.dir, { recursive: true });
    writeFileSync(this.config, toml(opts, { root: this.root, state: this.state, socket: this.socket }));
  }

  get cri(): CriClient {
    if (!this.client) throw new Error("containerd is not running");
    return this.client;
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  get running(): boolean {
    return this.proc !== undefined && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Starts containerd (again, after stop) and waits until CRI answers with its network ready. */
  async start(): Promise<void> {
    if (this.running) throw new Error("containerd is already running");
    appendFileSync(this.logFile, `--- start ${new Date().toISOString()}\n`);
    const log = Bun.file(this.logFile);
    this.proc = Bun.spawn({
      cmd: ["nsenter", `--net=${this.opts.netns}`, "containerd", "--config", this.config],
      stdin: "ignore",
      stdout: log,
      stderr: log,
    });
    this.client = new CriClient(this.socket);
    try {
      await waitFor(
        "containerd's CRI to answer with NetworkReady",
        async () => {
          if (!this.running) throw new Error(`containerd exited (${this.proc?.exitCode})`);
          try {
            const conds = await this.cri.conditions();
            return conds.some((c) => c.type === "NetworkReady" && c.status);
          } catch {
            return false;
          }
        },
        20_000,
        50,
      );
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- containerd log ---\n${this.logTail()}`);
    }
  }

  /** Imports the pause image into the k8s.io namespace (once per instance; kept across restarts). */
  async importPause(): Promise<void> {
    const tar = await pauseImageTar();
    const r = await run(["ctr", "--address", this.socket, "-n", "k8s.io", "images", "import", tar], {
      timeoutMs: 60_000,
    });
    if (r.code !== 0) throw new Error(`ctr images import failed (${r.code}): ${r.stderr.trim()}`);
  }

  /** Stops containerd alone (its shims and pods live on), as a service restart does. */
  async stop(signal: NodeJS.Signals = "SIGTERM", timeoutMs = 15_000): Promise<void> {
    const proc = this.proc;
    this.client?.close();
    this.client = undefined;
    if (!proc || !this.running) return;
    proc.kill(signal);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<boolean>((r) => {
      timer = setTimeout(() => r(false), timeoutMs);
    });
    const exited = await Promise.race([proc.exited.then(() => true), late]);
    clearTimeout(timer);
    if (!exited) {
      proc.kill("SIGKILL");
      await proc.exited;
    }
  }

  /** The shims this containerd started (found by its socket on their command line). */
  shims(): number[] {
    return pidsWith(["-address", this.socket]);
  }

  /**
   * The socket of a shim: containerd 1.6 puts it in /run/containerd/s whatever its state dir,
   * named by sha256("<containerd socket>/<namespace>/<id>"). A killed shim leaves it behind.
   */
  private shimSocket(pid: number): string | undefined {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      const arg = (k: string) => argv[argv.indexOf(k) + 1];
      const key = `${this.socket}/${arg("-namespace")}/${arg("-id")}`;
      return join("/run/containerd/s", createHash("sha256").update(key).digest("hex"));
    } catch {
      return undefined;
    }
  }

  logTail(lines = 30): string {
    if (!existsSync(this.logFile)) return "(no log)";
    return readFileSync(this.logFile, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  }

  /** Network namespaces containerd has mounted under its state dir. */
  netnsMounts(): string[] {
    return mountsUnder(this.state).filter((m) => m.includes("/netns/"));
  }

  /**
   * Stops and removes every sandbox, stops containerd, kills what is left of its shims and
   * their processes, unmounts what is left under its dir and removes it. Never throws;
   * failures are reported on stderr.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    const step = async (what: string, fn: () => unknown) => {
      try {
        await fn();
      } catch (err) {
        console.error(`containerd ${this.opts.dir}: cleanup: ${what}: ${(err as Error).message}`);
      }
    };
    if (this.running)
      await step("remove sandboxes", async () => {
        for (const s of await this.cri.listPodSandbox()) {
          await this.cri.stopPodSandbox(s.id, 30_000).catch(() => undefined);
          await this.cri.removePodSandbox(s.id, 30_000).catch(() => undefined);
        }
      });
    await step("stop containerd", () => this.stop());
    await step("kill shims", async () => {
      const shims = this.shims();
      // A shim is its pods' subreaper: kill the pods first, or they outlive it.
      const pods = shims.flatMap(childrenOf);
      const cgroups = pods.flatMap(sandboxCgroups);
      const sockets = shims.map((p) => this.shimSocket(p)).filter((x) => x !== undefined);
      for (const p of [...pods, ...shims]) kill(p, "SIGKILL");
      await waitFor("shims and pods to exit", () => [...pods, ...shims].every((p) => !alive(p)), 10_000);
      for (const f of sockets) rmSync(f, { force: true });
      // runc never deleted these containers: remove the cgroups it made for them.
      for (const cg of cgroups)
        for (const h of readdirSync("/sys/fs/cgroup")) {
          try {
            rmdirSync(join("/sys/fs/cgroup", h, cg));
          } catch {
            // not in this hierarchy
          }
        }
    });
    await step("unmount", async () => {
      for (const m of mountsUnder(this.opts.dir)) {
        const r = await run(["umount", "-l", m]);
        if (r.code !== 0) throw new Error(`umount ${m}: ${r.stderr.trim()}`);
      }
    });
    await step("remove dir", async () => {
      const r = await run(["rm", "-rf", "--one-file-system", this.opts.dir]);
      if (r.code !== 0) throw new Error(r.stderr.trim());
    });
  }
}

/** A directory for a containerd: short (socket paths are limited) and under the run's work dir. */
export function containerdDir(parent: string, name: string): string {
  const dir = join(parent, name);
  mkdirSync(dir, { recursive: true });
  return dir;
}
