// Runs the stand-in API server for the demo and for tests in other processes:
//
//   bun test/support/apiserver-fixture.ts --pods pod_specs/example.yaml [--pods more.yaml]
//       [--dir /tmp/x] [--auth token|cert] [--node NAME]
//
// --node schedules every pod without spec.nodeName to NAME (the node_name of the agent).
//
// Prints one JSON line {url, kubeconfig, token} on stdout once it serves, and runs until
// SIGTERM or SIGINT, then stops and removes what it wrote.
import { mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { resolve } from "node:path";
import { startApiServer } from "./apiserver.ts";

function parseArgs(argv: string[]): {
  pods: string[];
  dir: string;
  auth: "token" | "cert";
  node: string | undefined;
} {
  const pods: string[] = [];
  let node: string | undefined;
  let dir = tmpdir();
  let auth: "token" | "cert" = "token";
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === "--pods") pods.push(resolve(value()));
    else if (a === "--dir") dir = resolve(value());
    else if (a === "--node") node = value();
    else if (a === "--auth") {
      const v = value();
      if (v !== "token" && v !== "cert")
        throw new Error(`--auth must be token or cert, not ${JSON.stringify(v)}`);
      auth = v;
    } else throw new Error(`unknown argument ${JSON.stringify(a)}`);
  }
  return { pods, dir, auth, node };
}

let args: ReturnType<typeof parseArgs>;
try {
  args = parseArgs(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`apiserver-fixture: ${(err as Error).message}\n`);
  process.exit(2);
}
mkdirSync(args.dir, { recursive: true });
const api = startApiServer({
  podFiles: args.pods,
  dir: args.dir,
  clientCert: args.auth === "cert",
  ...(args.node ? { node: args.node } : {}),
});
const kubeconfig = api.writeKubeconfig(args.dir, { auth: args.auth, inline: true });

let stopping = false;
async function shutdown(): Promise<void> {
  if (stopping) return;
  stopping = true;
  await api.stop();
  process.exit(0);
}
process.on("SIGTERM", () => void shutdown());
process.on("SIGINT", () => void shutdown());

process.stdout.write(`${JSON.stringify({ url: api.url, kubeconfig, token: api.token })}\n`);
