import { CniError, Code } from "./errors.ts";
import { containerIdProblem, interfaceNameProblem, namespaceProblem, podNameProblem, show } from "./names.ts";
import { COMMANDS, type Command } from "./versions.ts";

/** The Kubernetes identity passed in CNI_ARGS by kubelet's runtimes. */
export interface PodRef {
  namespace: string;
  name: string;
  uid?: string;
  infraContainerId?: string;
}

export interface CniEnv {
  command: Command;
  containerId: string;
  netns: string;
  ifname: string;
  path: string[];
  /** Every CNI_ARGS pair, in order. */
  args: Array<[string, string]>;
  /** Present when CNI_ARGS names a pod (K8S_POD_NAMESPACE and K8S_POD_NAME). */
  pod?: PodRef;
}

const REQUIRED: Record<Command, readonly string[]> = {
  ADD: ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
  CHECK: ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
  DEL: ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
  GC: ["CNI_PATH"],
  STATUS: ["CNI_PATH"],
  VERSION: [],
};

function invalid(msg: string, details = ""): CniError {
  return new CniError(Code.InvalidEnv, msg, details);
}

/** Parses CNI_ARGS ("K=V;K=V"). A pair without "=" or with an empty key is an error. */
export function parseCniArgs(raw: string): Array<[string, string]> {
  if (raw.trim() === "") return [];
  return raw.split(";").map((pair) => {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw invalid(`CNI_ARGS: malformed pair ${show(pair)}: expected KEY=VALUE`);
    return [pair.slice(0, eq), pair.slice(eq + 1)];
  });
}

function podRef(args: Array<[string, string]>): PodRef | undefined {
  const get = (k: string) => args.findLast(([key]) => key === k)?.[1];
  const namespace = get("K8S_POD_NAMESPACE");
  const name = get("K8S_POD_NAME");
  if (!namespace && !name) return undefined;
  if (!namespace || !name) throw invalid("CNI_ARGS: K8S_POD_NAMESPACE and K8S_POD_NAME go together");
  const nsProblem = namespaceProblem(namespace);
  if (nsProblem) throw invalid(`CNI_ARGS: K8S_POD_NAMESPACE ${show(namespace)} ${nsProblem}`);
  const nameProblem = podNameProblem(name);
  if (nameProblem) throw invalid(`CNI_ARGS: K8S_POD_NAME ${show(name)} ${nameProblem}`);
  const ref: PodRef = { namespace, name };
  const uid = get("K8S_POD_UID");
  if (uid) ref.uid = uid;
  const infra = get("K8S_POD_INFRA_CONTAINER_ID");
  if (infra) ref.infraContainerId = infra;
  return ref;
}

/** Reads and validates the CNI_* variables for the command; every missing one in one error. */
export function parseEnv(env: Record<string, string | undefined>): CniEnv {
  const raw = env.CNI_COMMAND;
  const expected = `expected one of ${COMMANDS.join(", ")}`;
  if (!raw) throw invalid("CNI_COMMAND is not set", expected);
  const command = COMMANDS.find((c) => c === raw);
  if (!command) throw invalid(`CNI_COMMAND ${show(raw)} is not a CNI command`, expected);
  const missing = REQUIRED[command].filter((k) => !env[k]);
  if (missing.length > 0)
    throw invalid(`${command} needs ${missing.join(", ")}: not set`, `missing: ${missing.join(", ")}`);

  const containerId = env.CNI_CONTAINERID ?? "";
  if (containerId) {
    const problem = containerIdProblem(containerId);
    if (problem) throw invalid(`CNI_CONTAINERID ${show(containerId)} ${problem}`);
  }
  const ifname = env.CNI_IFNAME ?? "";
  if (ifname) {
    const problem = interfaceNameProblem(ifname);
    if (problem) throw invalid(`CNI_IFNAME ${show(ifname)} ${problem}`);
  }
  const netns = env.CNI_NETNS ?? "";
  if (netns && (!netns.startsWith("/") || netns.includes("\0")))
    throw invalid(`CNI_NETNS ${show(netns)} must be an absolute path`);
  const args = parseCniArgs(env.CNI_ARGS ?? "");
  const out: CniEnv = {
    command,
    containerId,
    netns,
    ifname,
    path: (env.CNI_PATH ?? "").split(":").filter((p) => p !== ""),
    args,
  };
  const pod = podRef(args);
  if (pod) out.pod = pod;
  return out;
}
