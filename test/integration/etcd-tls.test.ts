// etcd over TLS (CA, client certificates) and with username/password, against a real etcd
// started per test: through the compiled binary (`ratchet-child --check`, checkout hidden)
// and in-process through openEtcd.
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { parseNetConf } from "../../src/cni/config.ts";
import { describeEtcdError, openEtcd } from "../../src/store/etcd.ts";
import { makeCa, makePki } from "../support/certs.ts";
import { hiddenCheckout, installedBin, run, tempDir, type RunResult } from "../support/env.ts";
import { startEtcd, type TestEtcd } from "../support/etcd.ts";

interface CheckOutput {
  etcd: { ok: boolean; endpoints: string[]; version?: string; error?: string };
}

const secret = () => `pw-${crypto.randomUUID()}`;

/** `ratchet-child --check` with these config fields, as a node runs it; also returns its log. */
async function check(
  fields: Record<string, unknown>,
): Promise<RunResult & { out: CheckOutput; log: string }> {
  using dir = tempDir("ratchet-etcdcheck-");
  const conf = join(dir.path, "ratchet.conf");
  const logFile = join(dir.path, "ratchet.log");
  writeFileSync(
    conf,
    JSON.stringify({
      cniVersion: "1.0.0",
      name: "t",
      type: "ratchet",
      log_file: logFile,
      log_level: "debug",
      ...fields,
    }),
  );
  const child = join(dirname(installedBin()), "ratchet-child");
  const r = await run(hiddenCheckout([child, "--check", "--config", conf]), { timeoutMs: 60_000 });
  const log = existsSync(logFile) ? readFileSync(logFile, "utf8") : "";
  let out: CheckOutput;
  try {
    out = JSON.parse(r.stdout) as CheckOutput;
  } catch {
    throw new Error(
      `--check printed no JSON (exit ${r.code}): stdout ` +
        `${JSON.stringify(r.stdout)}, stderr ${JSON.stringify(r.stderr)}`,
    );
  }
  return { ...r, out, log };
}

function expectOk(r: RunResult & { out: CheckOutput }, etcd: TestEtcd): void {
  expect(r.stderr).toBe("");
  expect(r.out.etcd).toMatchObject({ ok: true, endpoints: [etcd.endpoint] });
  expect(r.out.etcd.version).toMatch(/^3\.\d+\.\d+/);
  expect(r.code).toBe(0);
}

function expectNotOk(r: RunResult & { out: CheckOutput }, problem: RegExp): string {
  expect(r.stderr).toBe("");
  expect(r.code).toBe(1);
  expect(r.out.etcd.ok).toBe(false);
  const error = r.out.etcd.error ?? "";
  // The error names the endpoint and the problem.
  for (const e of r.out.etcd.endpoints) expect(error).toContain(e);
  expect(error).toMatch(problem);
  return error;
}

function expectNoSecret(r: RunResult & { log: string }, ...secrets: string[]): void {
  for (const s of secrets) {
    expect(r.stdout).not.toContain(s);
    expect(r.stderr).not.toContain(s);
    expect(r.log).not.toContain(s);
  }
}

describe("ratchet-child --check against etcd with TLS and auth (compiled binary, checkout hidden)", () => {
  test("TLS with a CA: ok, with etcd_endpoints and with etcd_host (https:// because of the CA)", async () => {
    await using etcd = await startEtcd({ tls: true });
    expectOk(await check(etcd.conf()), etcd);
    const byHost = await check({ etcd_host: "127.0.0.1", etcd_port: etcd.port, etcd_ca_file: etcd.caFile });
    expectOk(byHost, etcd);
    // A host name rather than an IP address takes the ordinary SNI path.
    const byName = await check({ etcd_host: "localhost", etcd_port: etcd.port, etcd_ca_file: etcd.caFile });
    expect(byName.out.etcd).toMatchObject({ ok: true, endpoints: [`https://localhost:${etcd.port}`] });
  });

  test("TLS with a client certificate the server requires: ok", async () => {
    await using etcd = await startEtcd({ tls: true, clientCerts: true });
    expectOk(await check(etcd.conf()), etcd);
  });

  test("TLS, client certificate and username/password: ok, and the password is nowhere", async () => {
    const password = secret();
    await using etcd = await startEtcd({
      tls: true,
      clientCerts: true,
      auth: { username: "ratchet-node", password },
    });
    const r = await check(etcd.conf());
    expectOk(r, etcd);
    expectNoSecret(r, password);
  });

  test("username/password over plain http: ok", async () => {
    const password = secret();
    await using etcd = await startEtcd({ auth: { username: "ratchet-node", password } });
    const r = await check(etcd.conf());
    expectOk(r, etcd);
    expectNoSecret(r, password);
  });

  test("a CA that did not sign the server's certificate: not ok, the error says certificate", async () => {
    await using etcd = await startEtcd({ tls: true });
    const other = makeCa(join(etcd.dir, "other-ca"), "other", "some-other-ca");
    const r = await check({ ...etcd.conf(), etcd_ca_file: other.certFile });
    expectNotOk(r, /TLS: the server's certificate is not accepted: unable to verify/);
  });

  test("a wrong CA with a client cert and username/password: the error still says certificate", async () => {
    // Auth takes another path in etcd3 (a new channel per attempt) where grpc-js loses the cause.
    const password = secret();
    await using etcd = await startEtcd({ clientCerts: true, auth: { username: "ratchet-node", password } });
    const other = makeCa(join(etcd.dir, "other-ca"), "other", "some-other-ca");
    const r = await check({ ...etcd.conf(), etcd_ca_file: other.certFile });
    expectNotOk(r, /TLS: the server's certificate is not accepted: unable to verify/);
    expectNoSecret(r, password);
  });

  test("no client cert where the server needs one: not ok, the error points at etcd_cert_file", async () => {
    await using etcd = await startEtcd({ tls: true, clientCerts: true });
    const { etcd_cert_file: _c, etcd_key_file: _k, ...noCert } = etcd.conf();
    const r = await check(noCert);
    expectNotOk(r, /TLS.*etcd_cert_file/);
  });

  test("a wrong password: not ok with an authentication error; neither password appears", async () => {
    const password = secret();
    const wrong = secret();
    await using etcd = await startEtcd({
      tls: true,
      clientCerts: true,
      auth: { username: "ratchet-node", password },
    });
    const wrongFile = join(etcd.dir, "wrong-password");
    writeFileSync(wrongFile, `${wrong}\n`);
    const r = await check({ ...etcd.conf(), etcd_password_file: wrongFile });
    expectNotOk(r, /authentication failed for user "ratchet-node"/);
    expectNoSecret(r, password, wrong);
  });

  test("an unknown user over plain http: not ok with an authentication error", async () => {
    const password = secret();
    await using etcd = await startEtcd({ auth: { username: "ratchet-node", password } });
    const r = await check({ ...etcd.conf(), etcd_username: "nobody" });
    expectNotOk(r, /authentication failed for user "nobody"/);
    expectNoSecret(r, password);
  });

  test("http:// with TLS files, or an unreadable file: not ok, naming the endpoint or the file", async () => {
    await using etcd = await startEtcd({ tls: true });
    const plain = etcd.endpoint.replace("https://", "http://");
    const r = await check({ ...etcd.conf(), etcd_endpoints: [plain] });
    expectNotOk(r, /uses http:\/\/ but etcd_ca_file or etcd_cert_file is set/);
    const missing = join(etcd.dir, "no-such-ca.crt");
    const r2 = await check({ ...etcd.conf(), etcd_ca_file: missing });
    expect(expectNotOk(r2, /etcd_ca_file/)).toContain(missing);
  });
});

describe("openEtcd in-process against etcd with TLS and auth", () => {
  async function putGet(fields: Record<string, unknown>): Promise<string | null> {
    const conf = parseNetConf({ name: "t", type: "ratchet", ...fields });
    const client = openEtcd(conf);
    try {
      const key = `/ratchet/test/${crypto.randomUUID()}`;
      await client.put(key).value("v1");
      return await client.get(key).string();
    } finally {
      client.close();
    }
  }

  /** describeEtcdError of a put that must fail. */
  async function failure(fields: Record<string, unknown>): Promise<string> {
    const conf = parseNetConf({ name: "t", type: "ratchet", ...fields });
    const client = openEtcd(conf);
    try {
      await client.put("/ratchet/test/x").value("v");
    } catch (err) {
      return describeEtcdError(err, conf, client);
    } finally {
      client.close();
    }
    throw new Error("expected the etcd call to fail");
  }

  test("TLS: put and get under /ratchet", async () => {
    await using etcd = await startEtcd({ tls: true });
    expect(await putGet(etcd.conf())).toBe("v1");
  });

  test("TLS with a client certificate: put and get", async () => {
    await using etcd = await startEtcd({ clientCerts: true });
    expect(await putGet(etcd.conf())).toBe("v1");
  });

  test("TLS, client certificate and username/password: put and get; the role stops at /ratchet", async () => {
    const password = secret();
    await using etcd = await startEtcd({ clientCerts: true, auth: { username: "ratchet-node", password } });
    expect(await putGet(etcd.conf())).toBe("v1");
    const conf = parseNetConf({ name: "t", type: "ratchet", ...etcd.conf() });
    const client = openEtcd(conf);
    try {
      const err = await client
        .put("/elsewhere")
        .value("x")
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(describeEtcdError(err, conf)).toMatch(/permission denied for user "ratchet-node"/);
    } finally {
      client.close();
    }
  });

  test("username/password over plain http: put and get", async () => {
    await using etcd = await startEtcd({ auth: { username: "ratchet-node", password: secret() } });
    expect(await putGet(etcd.conf())).toBe("v1");
  });

  test("failures name the endpoint and the problem, never the password", async () => {
    const password = secret();
    await using etcd = await startEtcd({ clientCerts: true, auth: { username: "ratchet-node", password } });
    const other = makeCa(join(etcd.dir, "other-ca"), "other", "some-other-ca");
    const wrongCa = await failure({ ...etcd.conf(), etcd_ca_file: other.certFile });
    expect(wrongCa).toStartWith(
      `etcd ${etcd.endpoint}: TLS: the server's certificate is not accepted: unable to verify`,
    );
    // No etcd_ca_file: the default roots, which do not know the test CA.
    const { etcd_ca_file: _ca, ...noCa } = etcd.conf();
    expect(await failure(noCa)).toStartWith(
      `etcd ${etcd.endpoint}: TLS: the server's certificate is not accepted:`,
    );

    const { etcd_cert_file: _c, etcd_key_file: _k, ...noCert } = etcd.conf();
    expect(await failure(noCert)).toMatch(/^etcd \S+: TLS: .*etcd_cert_file and etcd_key_file/);

    const wrong = secret();
    const wrongFile = join(etcd.dir, "wrong-password");
    writeFileSync(wrongFile, wrong);
    const badPassword = await failure({ ...etcd.conf(), etcd_password_file: wrongFile });
    expect(badPassword).toStartWith(`etcd ${etcd.endpoint}: authentication failed for user "ratchet-node"`);
    expect(badPassword).not.toContain(wrong);
    expect(badPassword).not.toContain(password);

    // Should an error ever carry the password, it is masked.
    const conf = parseNetConf({ name: "t", type: "ratchet", ...etcd.conf() });
    expect(describeEtcdError(new Error(`odd: ${password}`), conf)).toBe(`etcd ${etcd.endpoint}: odd: ***`);
  });

  test("an IP endpoint the server's certificate does not name is refused", async () => {
    // The certificate is for 127.0.0.1, ::1 and localhost; serve it on 127.0.0.2. The TLS
    // handshake fails before any HTTP/2, so a plain TLS server stands in for etcd.
    using dir = tempDir("ratchet-etcdname-");
    const pki = makePki(dir.path);
    const server = Bun.listen({
      hostname: "127.0.0.2",
      port: 0,
      tls: { cert: pki.server.cert, key: pki.server.key },
      socket: { data() {} },
    });
    try {
      const endpoint = `https://127.0.0.2:${server.port}`;
      const error = await failure({ etcd_endpoints: [endpoint], etcd_ca_file: pki.ca.certFile });
      expect(error).toStartWith(`etcd ${endpoint}: TLS: the server's certificate is not accepted:`);
      expect(error).toContain("127.0.0.2");
    } finally {
      server.stop(true);
    }
  });

  test("a handle removes its files and its process on dispose", async () => {
    let dir: string;
    let endpoint: string;
    {
      await using etcd = await startEtcd({ clientCerts: true, auth: { username: "u", password: secret() } });
      dir = etcd.dir;
      endpoint = etcd.endpoint;
      expect(existsSync(dir)).toBe(true);
    }
    expect(existsSync(dir)).toBe(false);
    const conf = parseNetConf({
      name: "t",
      type: "ratchet",
      etcd_endpoints: [endpoint.replace("https://", "http://")],
    });
    expect(await failure(conf)).toMatch(/unreachable/);
  });
});
