// A throwaway etcd (Debian's etcd-server, 3.4) for one test: loopback, free ports, data and
// certificates in a temp dir; optionally TLS, client-certificate auth and username/password
// auth (set up through etcd3 from this process, not etcdctl). Disposing stops it and
// removes every file it made.
import { closeSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { Etcd3, Range, type IOptions } from "etcd3";
import { makePki, type TestPki } from "./certs.ts";
import { tempDir } from "./env.ts";

export interface EtcdOptions {
  /** Serve clients over TLS with a server certificate for 127.0.0.1/localhost from a test CA. */
  tls?: boolean;
  /** Require client certificates signed by that CA (--client-cert-auth). Implies tls. */
  clientCerts?: boolean;
  /** Enable auth with this user, whose role may read and write the /ratchet prefix. */
  auth?: { username: string; password: string };
  /** How long to wait for etcd to answer; default 20 s. */
  readyTimeoutMs?: number;
}

/** The ratchet config fields that reach a TestEtcd. */
export type EtcdConfFields = {
  etcd_endpoints: string[];
  etcd_ca_file?: string;
  etcd_cert_file?: string;
  etcd_key_file?: string;
  etcd_username?: string;
  etcd_password_file?: string;
};

export interface TestEtcd extends AsyncDisposable {
  /** Kills etcd (as a crash would), keeping its data and port for up(). */
  down(): Promise<void>;
  /** Starts it again on the same port with the same data; waits until healthy. */
  up(): Promise<void>;
  /** Client URL, e.g. https://127.0.0.1:40123. */
  readonly endpoint: string;
  readonly host: string;
  readonly port: number;
  /** The temp dir holding data, certificates, the password file and etcd's log. */
  readonly dir: string;
  /** Test PKI when tls: CA, server and client certificates. */
  readonly pki: TestPki | undefined;
  readonly caFile: string | undefined;
  /** Client certificate and key (signed by the CA) when tls. */
  readonly certFile: string | undefined;
  readonly keyFile: string | undefined;
  /** A file holding auth.password (with a trailing newline, as `echo` writes it) when auth. */
  readonly passwordFile: string | undefined;
  readonly logFile: string;
  /** The config fields for this etcd: endpoint, CA, client cert (if required), user. */
  conf(): EtcdConfFields;
  /** etcd3 options for a client of this etcd as the given user (default: the auth user; null: none). */
  clientOptions(as?: { username: string; password: string } | null): IOptions;
  stop(): Promise<void>;
}

// Should the test process die before a handle is disposed, its etcd must not outlive it.
const running = new Set<Subprocess>();
process.on("exit", () => {
  for (const p of running) p.kill("SIGKILL");
});

/** Free loopback TCP ports, held open together so they differ; etcd cannot take port 0. */
export function freePorts(n: number): number[] {
  const sockets = Array.from({ length: n }, () =>
    Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } }),
  );
  const ports = sockets.map((s) => s.port);
  for (const s of sockets) s.stop(true);
  return ports;
}

export async function waitExit(proc: Subprocess, ms: number): Promise<boolean> {
  let timer: Timer | undefined;
  const timeout = new Promise<false>((r) => {
    timer = setTimeout(() => r(false), ms);
  });
  const exited = await Promise.race([proc.exited.then(() => true as const), timeout]);
  clearTimeout(timer);
  return exited;
}

export function tail(file: string, lines = 15): string {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

/** Starts etcd with its output appended to logFile; the exit hook kills it if the test process dies. */
export function spawnLogged(args: string[], logFile: string): Subprocess {
  const log = openSync(logFile, "a");
  try {
    const proc = Bun.spawn({ cmd: args, stdin: "ignore", stdout: log, stderr: log });
    running.add(proc);
    return proc;
  } finally {
    closeSync(log);
  }
}

/** Starts etcd and waits until it answers /health (and auth is set up, if asked). */
export async function startEtcd(opts: EtcdOptions = {}): Promise<TestEtcd> {
  const tls = opts.tls === true || opts.clientCerts === true;
  const tmp = tempDir("ratchet-etcd-");
  const dir = tmp.path;
  let proc: Subprocess | undefined;
  const stop = async () => {
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      proc.kill("SIGTERM");
      if (!(await waitExit(proc, 5000))) {
        proc.kill("SIGKILL");
        await proc.exited;
      }
    }
    if (proc) running.delete(proc);
    tmp[Symbol.dispose]();
  };
  try {
    const pki = tls ? makePki(join(dir, "pki")) : undefined;
    const logFile = join(dir, "etcd.log");
    const passwordFile = opts.auth ? join(dir, "password") : undefined;
    if (passwordFile && opts.auth) writeFileSync(passwordFile, `${opts.auth.password}\n`, { mode: 0o600 });
    const scheme = tls ? "https" : "http";
    const host = "127.0.0.1";

    /** Runs etcd with `args` and waits until it answers at `url` (or exits, or the time is up). */
    const start = (args: string[], url: string) => {
      proc = spawnLogged(args, logFile);
      return waitHealthy(
        `${url}/health`,
        proc,
        pki,
        opts.clientCerts === true,
        opts.readyTimeoutMs ?? 20_000,
      );
    };
    // A port taken between freePorts() and etcd's bind makes etcd exit: try a few times.
    let port = 0;
    let lastArgs: string[] = [];
    let lastUrl = "";
    for (let attempt = 0; ; attempt++) {
      const [clientPort, peerPort] = freePorts(2) as [number, number];
      port = clientPort;
      const clientUrl = `${scheme}://${host}:${clientPort}`;
      const peerUrl = `http://${host}:${peerPort}`;
      const args = [
        "etcd",
        "--name",
        "ratchet-test",
        "--data-dir",
        join(dir, `data${attempt}`),
        "--listen-client-urls",
        clientUrl,
        "--advertise-client-urls",
        clientUrl,
        "--listen-peer-urls",
        peerUrl,
        "--initial-advertise-peer-urls",
        peerUrl,
        "--initial-cluster",
        `ratchet-test=${peerUrl}`,
        ...(pki ? ["--cert-file", pki.server.certFile, "--key-file", pki.server.keyFile] : []),
        ...(pki && opts.clientCerts ? ["--client-cert-auth", "--trusted-ca-file", pki.ca.certFile] : []),
      ];
      const ready = await start(args, clientUrl);
      lastArgs = args;
      lastUrl = clientUrl;
      if (ready === "ok") break;
      if (ready === "exited" && attempt < 2 && /address already in use/.test(tail(logFile, 50))) continue;
      throw new Error(
        `etcd at ${clientUrl} did not become healthy (${ready}); its log ends:\n${tail(logFile)}`,
      );
    }
    const endpoint = `${scheme}://${host}:${port}`;

    // Plain etcd3 sends an IP host as TLS SNI, which Bun refuses: its clients use the name.
    const clientOptions = (
      as: { username: string; password: string } | null | undefined = opts.auth,
    ): IOptions => ({
      hosts: [`${scheme}://localhost:${port}`],
      ...(pki
        ? {
            credentials: {
              rootCertificate: Buffer.from(pki.ca.cert),
              certChain: Buffer.from(pki.client.cert),
              privateKey: Buffer.from(pki.client.key),
            },
          }
        : {}),
      ...(as ? { auth: { username: as.username, password: as.password } } : {}),
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 10_000 }),
    });

    if (opts.auth) await enableAuth(clientOptions(null), opts.auth);

    const handle: TestEtcd = {
      endpoint,
      host,
      port,
      dir,
      pki,
      caFile: pki?.ca.certFile,
      certFile: pki?.client.certFile,
      keyFile: pki?.client.keyFile,
      passwordFile,
      logFile,
      conf: () => ({
        etcd_endpoints: [endpoint],
        ...(pki ? { etcd_ca_file: pki.ca.certFile } : {}),
        ...(pki && opts.clientCerts
          ? { etcd_cert_file: pki.client.certFile, etcd_key_file: pki.client.keyFile }
          : {}),
        ...(opts.auth && passwordFile
          ? { etcd_username: opts.auth.username, etcd_password_file: passwordFile }
          : {}),
      }),
      clientOptions,
      async down() {
        if (proc && proc.exitCode === null && proc.signalCode === null) {
          proc.kill("SIGKILL");
          await proc.exited;
        }
      },
      async up() {
        const ready = await start(lastArgs, lastUrl);
        if (ready !== "ok")
          throw new Error(`etcd at ${lastUrl} did not come back (${ready}); its log ends:\n${tail(logFile)}`);
      },
      stop,
      [Symbol.asyncDispose]: stop,
    };
    return handle;
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Polls /health until it says healthy, etcd exits, or the time is up. */
export async function waitHealthy(
  url: string,
  proc: Subprocess,
  pki: TestPki | undefined,
  clientCert: boolean,
  timeoutMs: number,
): Promise<"ok" | "exited" | "timeout"> {
  const tlsOpts = pki
    ? { ca: pki.ca.cert, ...(clientCert ? { cert: pki.client.cert, key: pki.client.key } : {}) }
    : undefined;
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (proc.exitCode !== null || proc.signalCode !== null) return "exited";
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(1000), ...(tlsOpts ? { tls: tlsOpts } : {}) });
      const body = (await r.json()) as { health?: string };
      if (r.ok && body.health === "true") return "ok";
    } catch {
      // Not listening yet.
    }
    // Poll again soon; exit early if etcd dies meanwhile.
    await waitExit(proc, 50);
  }
  return "timeout";
}

/** Creates root and the user (role: read/write on /ratchet), then enables auth. */
async function enableAuth(options: IOptions, user: { username: string; password: string }): Promise<void> {
  const client = new Etcd3(options);
  try {
    const rootPassword = `root-${crypto.randomUUID()}`;
    // etcd refuses to enable auth unless a root user with the root role exists.
    const root = await client.user("root").create(rootPassword);
    await root.addRole("root");
    const role = await client.role("ratchet-rw").create();
    await role.grant({ permission: "Readwrite", range: Range.prefix("/ratchet") });
    const u = await client.user(user.username).create(user.password);
    await u.addRole(role);
    await client.auth.authEnable();
  } finally {
    client.close();
  }
}
