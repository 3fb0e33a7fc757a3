// A throwaway etcd cluster of several members (Debian's etcd, 3.4) on loopback for one test:
// free ports, data and logs in a temp dir. Members can be killed (as a crash would) and
// started again; the leader is asked for; the keyspace can be compacted. Disposing stops
// every member and removes every file it made.
import { join } from "node:path";
import type { Subprocess } from "bun";
import { tempDir } from "./env.ts";
import { freePorts, spawnLogged, tail, waitExit, waitHealthy } from "./etcd.ts";

export interface EtcdMember {
  readonly name: string;
  readonly endpoint: string;
  readonly logFile: string;
  readonly running: boolean;
  /** Kills the member (SIGKILL), keeping its data and ports for up(). */
  down(): Promise<void>;
  /** Starts it again on the same ports and data; waits until it answers /health. */
  up(): Promise<void>;
}

export interface TestEtcdCluster extends AsyncDisposable {
  readonly members: EtcdMember[];
  readonly endpoints: string[];
  /** The config field for this cluster: every member's URL. */
  conf(): { etcd_endpoints: string[] };
  /** The member that leads now, as the running members say. */
  leader(): Promise<EtcdMember>;
  /** Compacts the keyspace at its current revision (physically); returns that revision. */
  compact(): Promise<string>;
  /** One v3 JSON gateway call, to the first running member that answers. */
  call(path: string, body: Record<string, unknown>): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

/** Starts `size` members (default 3) and waits until each answers /health. */
export async function startEtcdCluster(
  opts: { size?: number; readyTimeoutMs?: number } = {},
): Promise<TestEtcdCluster> {
  const size = opts.size ?? 3;
  const tmp = tempDir("ratchet-etcd-cluster-");
  const ports = freePorts(size * 2);
  const names = Array.from({ length: size }, (_, i) => `m${i}`);
  const peer = (i: number) => `http://127.0.0.1:${ports[size + i]}`;
  const initial = names.map((n, i) => `${n}=${peer(i)}`).join(",");
  const procs: Array<Subprocess | undefined> = new Array(size).fill(undefined);
  const alive = (i: number) => {
    const p = procs[i];
    return p !== undefined && p.exitCode === null && p.signalCode === null;
  };
  const starts: Array<() => Promise<void>> = [];
  const members: EtcdMember[] = names.map((name, i) => {
    const endpoint = `http://127.0.0.1:${ports[i]}`;
    const logFile = join(tmp.path, `${name}.log`);
    const args = [
      "etcd",
      "--name",
      name,
      "--data-dir",
      join(tmp.path, name),
      "--listen-client-urls",
      endpoint,
      "--advertise-client-urls",
      endpoint,
      "--listen-peer-urls",
      peer(i),
      "--initial-advertise-peer-urls",
      peer(i),
      "--initial-cluster",
      initial,
      "--initial-cluster-state",
      "new",
    ];
    const start = async () => {
      const p = spawnLogged(args, logFile);
      procs[i] = p;
      const ready = await waitHealthy(
        `${endpoint}/health`,
        p,
        undefined,
        false,
        opts.readyTimeoutMs ?? 30_000,
      );
      if (ready !== "ok")
        throw new Error(`etcd member ${name} at ${endpoint}: ${ready}; its log ends:\n${tail(logFile)}`);
    };
    starts.push(start);
    return {
      name,
      endpoint,
      logFile,
      get running() {
        return alive(i);
      },
      async down() {
        const p = procs[i];
        if (p && alive(i)) {
          p.kill("SIGKILL");
          await p.exited;
        }
      },
      up: start,
    };
  });

  const stop = async () => {
    for (const [i, p] of procs.entries()) {
      if (!p || !alive(i)) continue;
      p.kill("SIGTERM");
      if (!(await waitExit(p, 5000))) {
        p.kill("SIGKILL");
        await p.exited;
      }
    }
    tmp[Symbol.dispose]();
  };

  const call = async (path: string, body: Record<string, unknown>) => {
    let last: unknown;
    for (const [i, m] of members.entries()) {
      if (!alive(i)) continue;
      try {
        const res = await fetch(`${m.endpoint}/v3/${path}`, {
          method: "POST",
          body: JSON.stringify(body),
          signal: AbortSignal.timeout(5000),
        });
        const text = await res.text();
        if (res.ok) return JSON.parse(text) as Record<string, unknown>;
        last = new Error(`etcd ${path} at ${m.endpoint}: HTTP ${res.status}: ${text}`);
      } catch (err) {
        last = err;
      }
    }
    throw last ?? new Error("no etcd member is running");
  };

  try {
    // Together: each member waits for a quorum before it says it is healthy.
    await Promise.all(starts.map((start) => start()));
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    members,
    endpoints: members.map((m) => m.endpoint),
    conf: () => ({ etcd_endpoints: members.map((m) => m.endpoint) }),
    async leader() {
      for (const [i, m] of members.entries()) {
        if (!alive(i)) continue;
        try {
          const res = await fetch(`${m.endpoint}/v3/maintenance/status`, {
            method: "POST",
            body: "{}",
            signal: AbortSignal.timeout(3000),
          });
          const s = (await res.json()) as { header?: { member_id?: string }; leader?: string };
          if (s.leader && s.leader === s.header?.member_id) return m;
        } catch {
          // not answering: ask the next one
        }
      }
      throw new Error("no running etcd member says it leads");
    },
    async compact() {
      const r = (await call("kv/range", { key: Buffer.from("\0").toString("base64") })) as {
        header: { revision: string };
      };
      await call("kv/compaction", { revision: r.header.revision, physical: true });
      return r.header.revision;
    },
    call,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}
