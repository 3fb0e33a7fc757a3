import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { checkServerIdentity, createSecureContext, type SecureContext } from "node:tls";
// etcd3's own gRPC library (its dependency, one copy in node_modules): for TLS credentials.
import { circuitBreaker, ConsecutiveBreaker, handleWhen, retry } from "cockatiel";
import {
  ChannelCredentials,
  credentials as grpcCredentials,
  type CallCredentials,
  type ChannelOptions,
} from "@grpc/grpc-js";
import {
  Etcd3,
  EtcdAuthenticationFailedError,
  EtcdPermissionDeniedError,
  GRPCDeadlineExceededError,
  GRPCUnavailableError,
  isRecoverableError,
  type IOptions,
} from "etcd3";
import { etcdEndpoints, type NetConf } from "../cni/config.ts";

/** A config that cannot make an etcd client (contradictory scheme and TLS files, unreadable file). */
export class EtcdConfigError extends Error {
  override name = "EtcdConfigError";
}

/** Reads a file named by a config field; the error names the field and the path. */
function readConfigFile(field: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new EtcdConfigError(`${field} ${JSON.stringify(path)}: cannot read: ${e.code ?? e.message}`, {
      cause: err,
    });
  }
}

type Connector = ReturnType<ChannelCredentials["_createSecureConnector"]>;
type Target = Parameters<ChannelCredentials["_createSecureConnector"]>[0];

/** The host of a gRPC target such as `127.0.0.1:2379` or `[::1]:2379`, without brackets. */
function targetHost(target: Target): string {
  const hostPort = target.path.replace(/^\/+/, "");
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(hostPort);
  if (bracketed) return bracketed[1] as string;
  const colon = hostPort.lastIndexOf(":");
  return colon > 0 && hostPort.indexOf(":") === colon ? hostPort.slice(0, colon) : hostPort;
}

// What the TLS handshake announces (SNI) for an IP-address endpoint. RFC 6066 forbids an IP
// address there and Bun's tls.connect throws on one, yet grpc-js sends the target's host as
// SNI unless ssl_target_name_override is set. etcd picks no certificate by SNI, so any name
// will do; the certificate is still verified against the endpoint's IP address.
const SNI_FOR_IP = "etcd.ratchet.invalid";

/**
 * TLS channel credentials for etcd. The same as grpc-js's createSsl, except that an endpoint
 * given by IP address (the usual way to name etcd members) gets a placeholder SNI name and its
 * certificate checked against that address. Per connection, so it also covers the channel
 * etcd3 opens, without our channel options, to exchange the password for a token.
 */
class EtcdTlsCredentials extends ChannelCredentials {
  /**
   * The last TLS failure (handshake, or an alert right after it). grpc-js reports it only on
   * the channel that saw it; etcd3 opens a new channel for each password-for-token attempt,
   * and its retries then fail with "Last error: null". describeEtcdError reads it from here.
   */
  lastFailure: Error | undefined;

  constructor(private readonly context: SecureContext) {
    super();
  }
  _isSecure(): boolean {
    return true;
  }
  _equals(other: ChannelCredentials): boolean {
    return other === this;
  }
  _createSecureConnector(
    target: Target,
    options: ChannelOptions,
    callCredentials?: CallCredentials,
  ): Connector {
    const host = targetHost(target);
    const inner =
      isIP(host) === 0
        ? ChannelCredentials.createFromSecureContext(this.context)._createSecureConnector(
            target,
            options,
            callCredentials,
          )
        : ChannelCredentials.createFromSecureContext(this.context, {
            checkServerIdentity: (_sni, cert) => checkServerIdentity(host, cert),
          })._createSecureConnector(
            target,
            { ...options, "grpc.ssl_target_name_override": SNI_FOR_IP },
            callCredentials,
          );
    return {
      connect: async (socket) => {
        try {
          const result = await inner.connect(socket);
          this.lastFailure = undefined;
          // TLS 1.3: a server that refuses our certificate says so after the client's handshake is done.
          result.socket.once("error", (err: Error) => {
            this.lastFailure = err;
          });
          return result;
        } catch (err) {
          this.lastFailure = err instanceof Error ? err : new Error(String(err));
          throw err;
        }
      },
      waitForReady: () => inner.waitForReady(),
      getCallCredentials: () => inner.getCallCredentials(),
      destroy: () => inner.destroy(),
    };
  }
}

/**
 * Builds an Etcd3 whose TLS channels use `tlsCredentials`. etcd3 makes its channel credentials
 * in its constructor with `grpc.credentials.createSsl` and offers no way to pass our own, so
 * that one function is swapped for the duration of the (synchronous) constructor call.
 */
function etcd3WithCredentials(options: IOptions, tlsCredentials: EtcdTlsCredentials | undefined): Etcd3 {
  if (!tlsCredentials) return new Etcd3(options);
  const createSsl = grpcCredentials.createSsl;
  let taken = false;
  grpcCredentials.createSsl = () => {
    taken = true;
    return tlsCredentials;
  };
  let client: Etcd3;
  try {
    client = new Etcd3(options);
  } finally {
    grpcCredentials.createSsl = createSsl;
  }
  if (!taken) {
    // E.g. etcd3 got its own copy of @grpc/grpc-js. It would then use its createSsl with an empty CA: fail here, clearly.
    client.close();
    throw new EtcdConfigError(
      "etcd3 did not take ratchet's TLS credentials (a second copy of @grpc/grpc-js?)",
    );
  }
  tlsOf.set(client, tlsCredentials);
  return client;
}

/** The TLS credentials of each client openEtcd made, for describeEtcdError. */
const tlsOf = new WeakMap<Etcd3, EtcdTlsCredentials>();

export interface OpenEtcdOptions {
  /**
   * Deadline of each unary call (and of the password-for-token exchange), connecting
   * included: without one a call to an etcd that accepts no connection waits forever. Watches
   * and other streams have none. Default 5000 ms.
   */
  callTimeoutMs?: number;
}

/**
 * Opens an etcd client as the config describes: endpoints, TLS (CA, client certificate)
 * and username/password. Files are read now, so a bad path fails here with its name.
 * Only the child imports this module: the parent must never load etcd3.
 */
export function openEtcd(conf: NetConf, opts: OpenEtcdOptions = {}): Etcd3 {
  const hosts = etcdEndpoints(conf);
  const secure = hosts.filter((h) => h.startsWith("https://"));
  if (secure.length > 0 && secure.length < hosts.length) {
    throw new EtcdConfigError(
      `etcd_endpoints mix https:// (${secure.join(", ")}) and http://: use one scheme for all`,
    );
  }
  const tlsFiles = conf.etcd_ca_file !== undefined || conf.etcd_cert_file !== undefined;
  if (tlsFiles && secure.length === 0) {
    // etcd3 would talk TLS to an http:// URL anyway; say so rather than guess what was meant.
    throw new EtcdConfigError(
      `etcd endpoint ${hosts[0]} uses http:// but etcd_ca_file or etcd_cert_file is set: use https://`,
    );
  }

  const timeoutMs = opts.callTimeoutMs ?? 5000;
  const options: IOptions = {
    hosts,
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeoutMs }),
    faultHandling: {
      // etcd3's default breaker stops trying a host for 5 s after three failures, so an
      // agent kept failing ADDs for seconds after etcd came back. Try again after 500 ms.
      host: () =>
        circuitBreaker(handleWhen(isRecoverableError), {
          halfOpenAfter: 500,
          breaker: new ConsecutiveBreaker(3),
        }),
      global: retry(handleWhen(isRecoverableError), { maxAttempts: 2 }),
    },
  };

  let tlsCredentials: EtcdTlsCredentials | undefined;
  if (secure.length > 0) {
    // No etcd_ca_file: the runtime's default roots, as for any https:// URL.
    const ca = conf.etcd_ca_file ? readConfigFile("etcd_ca_file", conf.etcd_ca_file) : undefined;
    const cert = conf.etcd_cert_file ? readConfigFile("etcd_cert_file", conf.etcd_cert_file) : undefined;
    const key = conf.etcd_key_file ? readConfigFile("etcd_key_file", conf.etcd_key_file) : undefined;
    let context: SecureContext;
    try {
      context = createSecureContext({
        ...(ca ? { ca } : {}),
        ...(cert ? { cert } : {}),
        ...(key ? { key } : {}),
      });
    } catch (err) {
      const files = [conf.etcd_ca_file, conf.etcd_cert_file, conf.etcd_key_file]
        .filter((f) => f !== undefined)
        .join(", ");
      throw new EtcdConfigError(`etcd TLS files (${files}) are not usable: ${(err as Error).message}`, {
        cause: err,
      });
    }
    tlsCredentials = new EtcdTlsCredentials(context);
    // etcd3 calls createSsl only when credentials are given or a host is https://.
    options.credentials = { rootCertificate: ca ?? Buffer.alloc(0) };
  }

  if (conf.etcd_username !== undefined && conf.etcd_password_file !== undefined) {
    // One trailing newline (echo, most secret stores) is not part of the password.
    const password = readConfigFile("etcd_password_file", conf.etcd_password_file)
      .toString("utf8")
      .replace(/\r?\n$/, "");
    if (password === "")
      throw new EtcdConfigError(`etcd_password_file ${JSON.stringify(conf.etcd_password_file)} is empty`);
    options.auth = {
      username: conf.etcd_username,
      password,
      callOptions: () => ({ deadline: Date.now() + timeoutMs }),
    };
  }
  return etcd3WithCredentials(options, tlsCredentials);
}

/** What grpc-js reports as the reason no connection could be made ("null" when it had none). */
function connectionProblem(message: string): string | undefined {
  const m = /No connection established\. Last error: (.*?)\. Resolution note:/s.exec(message);
  return m ? (m[1] as string).replace(/^(Type)?Error( \[[A-Z_]+\])?: /, "") : undefined;
}

/**
 * One line for a failed etcd call: the endpoints, then what went wrong and which config field
 * to look at. Pass the client the call was made with: it may know the TLS failure better. Never contains the password: etcd3 does not put it in errors, and in case a
 * future version does, the password file's content is masked.
 */
export function describeEtcdError(err: unknown, conf: NetConf, client?: Etcd3): string {
  const where = `etcd ${etcdEndpoints(conf).join(", ")}`;
  const tls = etcdEndpoints(conf).some((h) => h.startsWith("https://"));
  const message = err instanceof Error ? err.message : String(err);
  let problem: string;
  if (err instanceof EtcdConfigError) {
    problem = message;
  } else if (err instanceof EtcdAuthenticationFailedError) {
    problem = `authentication failed for user ${JSON.stringify(conf.etcd_username)}: wrong etcd_username or password in etcd_password_file (${message})`;
  } else if (err instanceof EtcdPermissionDeniedError) {
    problem = conf.etcd_username
      ? `permission denied for user ${JSON.stringify(conf.etcd_username)} (${message})`
      : `permission denied: etcd has auth enabled; set etcd_username and etcd_password_file (${message})`;
  } else if (err instanceof GRPCDeadlineExceededError) {
    problem = `no answer in time (${message})`;
  } else if (err instanceof GRPCUnavailableError) {
    const reported = connectionProblem(message);
    const recorded = client ? tlsOf.get(client)?.lastFailure?.message : undefined;
    const cause = reported === undefined || reported === "null" ? (recorded ?? reported) : reported;
    const clientCertHint = conf.etcd_cert_file
      ? "does it accept the client certificate in etcd_cert_file?"
      : "if it requires client certificates (--client-cert-auth), set etcd_cert_file and etcd_key_file";
    if (cause && /ALERT/i.test(cause)) {
      // A TLS alert is the server refusing the handshake, usually over our certificate (or its absence).
      problem = `TLS: the server refused the handshake: ${cause}; ${clientCertHint}`;
    } else if (cause && /certificate|self[- ]signed|altname|CERT_|verify/i.test(cause)) {
      problem = `TLS: the server's certificate is not accepted: ${cause} (check etcd_ca_file and that the certificate names the endpoint's host)`;
    } else if (tls && (cause === undefined || cause === "null")) {
      // TLS 1.3: the server may reject our certificate after the client considers the handshake done.
      problem = `TLS: the server closed the connection during or right after the handshake; ${clientCertHint} (${message})`;
    } else {
      problem = `unreachable: ${cause ?? message}`;
    }
  } else {
    problem = message;
  }
  return redactPassword(`${where}: ${problem}`, conf);
}

function redactPassword(text: string, conf: NetConf): string {
  if (!conf.etcd_password_file) return text;
  let password: string;
  try {
    password = readFileSync(conf.etcd_password_file, "utf8").replace(/\r?\n$/, "");
  } catch {
    return text;
  }
  return password.length >= 1 ? text.split(password).join("***") : text;
}
