// Entry point: picks the mode and nothing else. In a compiled Bun binary process.argv[0]
// is "bun" and process.execPath resolves symlinks, so only process.argv0 keeps the name
// the binary was invoked by (ratchet or the ratchet-child symlink).
import { basename } from "node:path";
import { BUILD_ID, COMMIT, VERSION } from "./version.ts";

export type Mode = "parent" | "child";

export class UsageError extends Error {
  override name = "UsageError";
}

/** The mode from the invoked name, overridden by --mode=; returns the remaining arguments. */
export function pickMode(argv0: string, args: readonly string[]): { mode: Mode; rest: string[] } {
  let mode: Mode = basename(argv0) === "ratchet-child" ? "child" : "parent";
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    let value: string | undefined;
    if (a.startsWith("--mode=")) value = a.slice("--mode=".length);
    else if (a === "--mode") {
      value = args[++i];
      if (value === undefined) throw new UsageError("--mode needs a value: parent or child");
    } else {
      rest.push(a);
      continue;
    }
    if (value !== "parent" && value !== "child")
      throw new UsageError(`unknown mode ${JSON.stringify(value)}: expected parent or child`);
    mode = value;
  }
  return { mode, rest };
}

export const USAGE: Record<Mode, string> = {
  parent: `ratchet ${VERSION}: CNI plugin giving pods point-to-point links (veth, VXLAN)

Usage:
  ratchet                     run as a CNI plugin: CNI_* environment, config on stdin
  ratchet --mode=child [...]  run the node agent (same as ratchet-child)
  ratchet links [--config FILE] [--output table|json|dot]
                              show every endpoint and link ratchet keeps in etcd
                              (FILE defaults to /etc/cni/net.d/10-ratchet.conf)
  ratchet --version | --help
`,
  child: `ratchet-child ${VERSION}: the ratchet node agent

Usage:
  ratchet-child --config FILE          run the agent in the foreground, logs on stderr
  ratchet-child --check --config FILE  check that etcd answers, print JSON, exit
  ratchet-child --pod NS/NAME --config FILE
                                       show how the agent reads a pod's ratchet labels
  ratchet-child --version | --help
`,
};

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  let picked: { mode: Mode; rest: string[] };
  try {
    picked = pickMode(process.argv0, args);
  } catch (err) {
    process.stderr.write(`ratchet: ${(err as Error).message}\n`);
    return 2;
  }
  const { mode, rest } = picked;
  if (rest.includes("--version")) {
    writeOut(`ratchet ${VERSION} (commit ${COMMIT}, build ${BUILD_ID}, mode ${mode})\n`);
    return 0;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    writeOut(USAGE[mode]);
    return 0;
  }
  if (mode === "child") {
    const { runChild } = await import("./child/main.ts");
    return runChild(rest);
  }
  if (rest[0] === "links") {
    const { runLinks } = await import("./cli/links.ts");
    return runLinks(rest.slice(1), writeOut, (s) => process.stderr.write(s));
  }
  const { runParent } = await import("./parent/main.ts");
  return runParent(rest, {
    env: process.env,
    readStdin: () => Bun.stdin.text(),
    write: writeOut,
    writeTrace: writeErr,
  });
}

// What goes to stdout (a CNI result, `ratchet links`) and the trace on stderr, written in
// full before the process exits: a result of thousands of links is more than a pipe takes at
// once. Bun.write, not process.stdout: setting up Node's stream costs a Bun process ~8 ms.
let written: Promise<unknown> = Promise.resolve();
function writeOut(s: string): void {
  written = written.then(() => Bun.write(Bun.stdout, s));
}
function writeErr(s: string): void {
  written = written.then(() => Bun.write(Bun.stderr, s));
}

if (import.meta.main) {
  main().then(
    async (code) => {
      await written;
      process.exit(code);
    },
    (err: unknown) => {
      process.stderr.write(
        `ratchet: unexpected failure: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
      );
      process.exit(1);
    },
  );
}
