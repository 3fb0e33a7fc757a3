import * as v from "valibot";
import { CniError, Code } from "./errors.ts";
import { interfaceNameProblem, podNameProblem, show } from "./names.ts";

// The network configuration ratchet reads on stdin. Field names follow the original
// ratchet-cni README (our compatibility contract); the rest are additions. Unknown fields
// are kept (looseObject): runtimes and other tools add their own.

const absolutePath = (what: string) =>
  v.pipe(
    v.string(),
    v.nonEmpty(`${what} must not be empty`),
    v.check((p) => p.startsWith("/"), `${what} must be an absolute path`),
    v.check((p) => !p.includes("\0"), `${what} must not contain NUL`),
  );

const ifname = v.pipe(
  v.string(),
  v.rawCheck(({ dataset, addIssue }) => {
    if (!dataset.typed) return;
    const problem = interfaceNameProblem(dataset.value);
    if (problem) addIssue({ message: `interface name ${show(dataset.value)} ${problem}` });
  }),
);

const port = v.pipe(
  v.union([v.string(), v.number()], "must be a port number (string or number)"),
  v.transform((p) => (typeof p === "string" && /^\d+$/.test(p) ? Number(p) : p)),
  v.number("must be a port number"),
  v.integer("must be an integer"),
  v.minValue(1, "must be between 1 and 65535"),
  v.maxValue(65535, "must be between 1 and 65535"),
);

/** "host:port" to listen on: an IPv4 address, [IPv6], a name, or nothing (every address). */
export function listenAddressProblem(a: string): string | undefined {
  const m = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):(\d{1,5})$/.exec(a);
  if (!m) return "must be host:port, e.g. 127.0.0.1:9464, [::1]:9464 or :9464 (or empty: off)";
  if (Number(m[2]) > 65535) return "port must be 0..65535";
  return undefined;
}

const listenAddress = v.pipe(
  v.string("metrics_address must be a string"),
  v.check(
    (a) => a === "" || listenAddressProblem(a) === undefined,
    (i) => listenAddressProblem(i.input) ?? "",
  ),
);

const etcdUrl = v.pipe(
  v.string(),
  v.url("must be a URL such as https://10.0.0.1:2379"),
  v.check((u) => /^https?:\/\//.test(u), "must use http:// or https://"),
);

/** An embedded CNI network configuration (delegate, boot_network): only `type` is ours to check. */
const PluginConf = v.looseObject({
  type: v.pipe(
    v.string("type must be a string"),
    v.nonEmpty("type must not be empty"),
    v.check(
      (t) => !t.includes("/") && t !== "." && t !== ".." && !t.includes("\0"),
      "type must be a plain plugin name, without '/'",
    ),
  ),
  cniVersion: v.optional(v.string()),
  name: v.optional(v.string()),
});
export type PluginConf = v.InferOutput<typeof PluginConf>;

export const NetConf = v.pipe(
  v.looseObject({
    cniVersion: v.optional(v.string("cniVersion must be a string"), "0.3.1"),
    name: v.pipe(v.string("name must be a string"), v.nonEmpty("name must not be empty")),
    type: v.pipe(v.string("type must be a string"), v.nonEmpty("type must not be empty")),

    // The original's fields.
    etcd_host: v.optional(v.pipe(v.string(), v.nonEmpty("etcd_host must not be empty"))),
    etcd_port: v.optional(port, 2379),
    child_path: v.optional(absolutePath("child_path")),
    use_labels: v.optional(v.unknown()),
    parent_interface: v.optional(ifname),
    parent_address: v.optional(
      v.union(
        [v.literal(""), v.pipe(v.string(), v.ip("must be an IPv4 or IPv6 address, or empty"))],
        "must be an IP address or empty",
      ),
      "",
    ),
    /**
     * The node's host network namespace, where parent_interface lives and VXLAN devices are
     * made, when the agent does not run in it (several simulated nodes on one machine).
     */
    host_netns: v.optional(absolutePath("host_netns")),
    delegate: v.optional(PluginConf),
    boot_network: v.optional(PluginConf),

    // Additions.
    /** Where ratchet's keys live in etcd; several clusters (or test runs) can share one etcd. */
    etcd_prefix: v.optional(
      v.pipe(
        v.string(),
        v.regex(
          /^\/[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/,
          "etcd_prefix must be an absolute key path such as /ratchet (letters, digits, '_', '.', '-')",
        ),
      ),
      "/ratchet",
    ),
    etcd_endpoints: v.optional(
      v.pipe(v.array(etcdUrl), v.minLength(1, "etcd_endpoints must list at least one URL")),
    ),
    etcd_ca_file: v.optional(absolutePath("etcd_ca_file")),
    etcd_cert_file: v.optional(absolutePath("etcd_cert_file")),
    etcd_key_file: v.optional(absolutePath("etcd_key_file")),
    etcd_username: v.optional(v.pipe(v.string(), v.nonEmpty())),
    etcd_password_file: v.optional(absolutePath("etcd_password_file")),
    kubeconfig: v.optional(absolutePath("kubeconfig")),
    /** This node's Kubernetes name, whose pods the agent watches; else $NODE_NAME, else the hostname. */
    node_name: v.optional(
      v.pipe(
        v.string(),
        v.rawCheck(({ dataset, addIssue }) => {
          if (!dataset.typed) return;
          // Node names follow the same rule as pod names: DNS-1123 subdomains.
          const problem = podNameProblem(dataset.value);
          if (problem) addIssue({ message: `node_name ${show(dataset.value)} ${problem}` });
        }),
      ),
    ),
    child_socket: v.optional(absolutePath("child_socket"), "/run/ratchet/child.sock"),
    child_idle_seconds: v.optional(
      v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(86400 * 7)),
      600,
    ),
    log_file: v.optional(absolutePath("log_file"), "/var/log/ratchet/ratchet.log"),
    log_level: v.optional(
      v.picklist(["error", "warn", "info", "debug"], "log_level must be one of error, warn, info, debug"),
      "info",
    ),
    /** Where the agent serves /metrics, /healthz and /readyz; "" serves none of them. */
    metrics_address: v.optional(listenAddress, ""),
    /** Keep each ratchet pod's k8s.v1.cni.cncf.io/network-status annotation current. */
    network_status_annotation: v.optional(v.boolean("network_status_annotation must be true or false"), true),
    default_prefix: v.optional(
      v.pipe(
        v.number(),
        v.integer(),
        v.minValue(0),
        v.maxValue(32, "default_prefix is an IPv4 prefix length (0..32)"),
      ),
      24,
    ),

    // Set by the runtime in a conflist.
    prevResult: v.optional(v.unknown()),
  }),
  v.forward(
    v.check(
      (c) => c.etcd_endpoints !== undefined || c.etcd_host !== undefined,
      "etcd_host or etcd_endpoints is required",
    ),
    ["etcd_host"],
  ),
  v.forward(
    v.check(
      (c) => (c.etcd_cert_file === undefined) === (c.etcd_key_file === undefined),
      "etcd_cert_file and etcd_key_file go together",
    ),
    ["etcd_key_file"],
  ),
  v.forward(
    v.check(
      (c) => (c.etcd_username === undefined) === (c.etcd_password_file === undefined),
      "etcd_username and etcd_password_file go together",
    ),
    ["etcd_password_file"],
  ),
);
export type NetConf = v.InferOutput<typeof NetConf>;

/** Validates a parsed config. Throws CniError code 7 naming the field, the value and the problem. */
export function parseNetConf(input: unknown): NetConf {
  const res = v.safeParse(NetConf, input);
  if (res.success) return res.output;
  const lines = res.issues.map((issue) => {
    const path = v.getDotPath(issue) ?? "(config)";
    // A cross-field check reports the whole object as its input: show the named field instead.
    const keys = issue.path?.map((p) => p.key) ?? [];
    const value = keys.reduce<unknown>(
      (o, k) => (o && typeof o === "object" ? (o as Record<string, unknown>)[String(k)] : undefined),
      input,
    );
    const got = value === undefined ? "missing" : `got ${show(value)}`;
    return `field ${path}: ${issue.message} (${got})`;
  });
  throw new CniError(Code.InvalidConfig, `invalid network configuration: ${lines[0]}`, lines.join("; "));
}

/** The etcd endpoints a config names: etcd_endpoints, else etcd_host:etcd_port. */
export function etcdEndpoints(conf: NetConf): string[] {
  if (conf.etcd_endpoints) return conf.etcd_endpoints;
  const host = conf.etcd_host ?? "localhost";
  const scheme = conf.etcd_ca_file || conf.etcd_cert_file ? "https" : "http";
  const h = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  return [`${scheme}://${h}:${conf.etcd_port}`];
}
