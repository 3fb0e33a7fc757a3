// Test certificates made with the openssl CLI (tests may run programs; the product may not).
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface KeyPair {
  cert: string;
  key: string;
  certFile: string;
  keyFile: string;
}

export interface TestPki {
  dir: string;
  ca: KeyPair;
  /** For 127.0.0.1, ::1 and localhost, signed by `ca`. */
  server: KeyPair;
  /** A client certificate (CN ratchet-node, O system:nodes), signed by `ca`. */
  client: KeyPair;
}

function openssl(args: string[], cwd: string): void {
  const r = Bun.spawnSync({ cmd: ["openssl", ...args], cwd, stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0)
    throw new Error(`openssl ${args.join(" ")} failed (${r.exitCode}): ${r.stderr.toString()}`);
}

function pair(dir: string, name: string): KeyPair {
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  return { cert: readFileSync(certFile, "utf8"), key: readFileSync(keyFile, "utf8"), certFile, keyFile };
}

const KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/** A self-signed CA in `dir` (name.crt, name.key). */
export function makeCa(dir: string, name = "ca", cn = "ratchet-test-ca"): KeyPair {
  mkdirSync(dir, { recursive: true });
  openssl(
    [
      "req",
      "-x509",
      ...KEY,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.crt`,
      "-days",
      "2",
      "-subj",
      `/CN=${cn}`,
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
    ],
    dir,
  );
  return pair(dir, name);
}

function signed(dir: string, ca: KeyPair, name: string, subject: string, ext: string): KeyPair {
  openssl(["req", "-new", ...KEY, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", subject], dir);
  writeFileSync(join(dir, `${name}.ext`), ext);
  openssl(
    [
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      ca.certFile,
      "-CAkey",
      ca.keyFile,
      "-CAcreateserial",
      "-out",
      `${name}.crt`,
      "-days",
      "2",
      "-extfile",
      `${name}.ext`,
    ],
    dir,
  );
  return pair(dir, name);
}

/** A CA, a server certificate for loopback and a client certificate, all in `dir`. */
export function makePki(dir: string): TestPki {
  const ca = makeCa(dir);
  const server = signed(
    dir,
    ca,
    "server",
    "/CN=ratchet-test-apiserver",
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n" +
      "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n",
  );
  const client = signed(
    dir,
    ca,
    "client",
    "/O=system:nodes/CN=ratchet-node",
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
  );
  return { dir, ca, server, client };
}
