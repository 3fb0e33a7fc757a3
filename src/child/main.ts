import { readFileSync } from "node:fs";
import { parseNetConf, etcdEndpoints, type NetConf } from "../cni/config.ts";
import { CniError, Code, toCniError } from "../cni/errors.ts";

function option(args: string[], name: string): string | undefined {
  const i = args.findIndex((a) => a === name || a.startsWith(`${name}=`));
  if (i < 0) return undefined;
  const a = args[i] as string;
  return a.includes("=") ? a.slice(name.length + 1) : args[i + 1];
}

export function loadConfigFile(path: string): NetConf {
  const text = readFileSync(path, "utf8");
  const json: unknown = JSON.parse(text);
  // A .conflist holds ratchet as one of its plugins: take that entry, with the list's name and version.
  if (json && typeof json === "object" && Array.isArray((json as { plugins?: unknown }).plugins)) {
    const list = json as { name?: string; cniVersion?: string; plugins: Array<Record<string, unknown>> };
    const mine = list.plugins.find((p) => p.type === "ratchet");
    if (!mine) throw new Error(`${path}: no plugin of type "ratchet" in the conflist`);
    return parseNetConf({ cniVersion: list.cniVersion, name: list.name, ...mine });
  }
  return parseNetConf(json);
}

/** `ratchet-child --check`: can this node reach etcd with this config? */
async function check(conf: NetConf): Promise<number> {
  const { openEtcd } = await import("../store/etcd.ts");
  const client = openEtcd(conf);
  try {
    const status = await client.maintenance.status();
    process.stdout.write(`${JSON.stringify({ etcd: { ok: true, endpoints: etcdEndpoints(conf), version: status.version } })}\n`);
    return 0;
  } catch (err) {
    process.stdout.write(`${JSON.stringify({ etcd: { ok: false, endpoints: etcdEndpoints(conf), error: (err as Error).message } })}\n`);
    return 1;
  } finally {
    client.close();
  }
}

/**
 * `ratchet-child --pod NAMESPACE/NAME --config FILE`: reads the pod as the agent would and
 * prints its classification ({pod, eligible, links}); on error the CNI error JSON, exit 1.
 */
async function classifyPod(conf: NetConf, ref: string, env: Record<string, string | undefined>): Promise<number> {
  try {
    const slash = ref.indexOf("/");
    if (slash <= 0 || slash === ref.length - 1) throw new CniError(Code.InvalidPodSpec, `--pod ${JSON.stringify(ref)}: expected NAMESPACE/NAME`);
    const [{ PodReader }, { podLinks }] = await Promise.all([import("./kube.ts"), import("./podspec.ts")]);
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

export async function runChild(args: string[]): Promise<number> {
  const configPath = option(args, "--config");
  if (!configPath) {
    process.stderr.write("ratchet-child: --config FILE is required\n");
    return 2;
  }
  let conf: NetConf;
  try {
    conf = loadConfigFile(configPath);
  } catch (err) {
    process.stderr.write(`ratchet-child: ${toCniError(err).message}\n`);
    return 2;
  }
  if (args.includes("--check")) return check(conf);
  const pod = option(args, "--pod");
  if (pod !== undefined) return classifyPod(conf, pod, process.env);
  process.stderr.write("ratchet-child: the agent loop is not built yet; use --check\n");
  return 2;
}
