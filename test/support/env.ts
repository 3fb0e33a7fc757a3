// Shared test harness: where the binary is, the etcd to use, and process helpers.
import { copyFileSync, existsSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

export const REPO = join(import.meta.dir, "..", "..");
export const BIN = process.env.RATCHET_BIN ?? join(REPO, "bin", "ratchet");
export const BUN = process.execPath;

/** One member of the etcd cluster that scripts/test.sh started for this run. */
export function etcdEndpoint(): string {
  const url = process.env.RATCHET_TEST_ETCD;
  if (!url) throw new Error("RATCHET_TEST_ETCD is not set: run the tests through ./scripts/test.sh");
  return url;
}

/** Every member of that cluster (three; one when only RATCHET_TEST_ETCD is set). */
export function etcdEndpoints(): string[] {
  const list = process.env.RATCHET_TEST_ETCD_ENDPOINTS;
  return list ? list.split(",") : [etcdEndpoint()];
}

export function requireBinary(): string {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run ./scripts/build (./scripts/test.sh does)`);
  return BIN;
}

/** A temporary directory removed on dispose. Outside the checkout on purpose. */
export function tempDir(prefix = "ratchet-test-"): { path: string; [Symbol.dispose](): void } {
  // Under scripts/test.sh's work directory when there is one: its safety net then finds
  // (and stops) any node agent whose log lives here.
  const path = mkdtempSync(join(process.env.RATCHET_TEST_WORK ?? tmpdir(), prefix));
  return { path, [Symbol.dispose]: () => rmSync(path, { recursive: true, force: true }) };
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program with the given argv0, env and stdin; never through a shell. */
export async function run(
  cmd: string[],
  opts: { env?: Record<string, string | undefined>; stdin?: string; argv0?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  const proc = Bun.spawn({
    cmd,
    env: opts.env ?? (process.env as Record<string, string>),
    stdin: opts.stdin === undefined ? "ignore" : new TextEncoder().encode(opts.stdin),
    stdout: "pipe",
    stderr: "pipe",
    ...(opts.argv0 ? { argv0: opts.argv0 } : {}),
    timeout: opts.timeoutMs ?? 30_000,
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { code, stdout, stderr };
}

let counter = 0;
/**
 * A unique name for a netns or host link this test run creates: the run's prefix (so
 * scripts/test.sh can remove leftovers of this run only) plus a counter; at most 15 bytes.
 */
export function uniqueName(tag = ""): string {
  const prefix = process.env.RATCHET_TEST_PREFIX ?? "rtdev";
  const name = `${prefix}${tag}${(counter++).toString(36)}${process.pid.toString(36).slice(-2)}`;
  if (name.length > 15) throw new Error(`test name ${name} is longer than 15 bytes: shorten the tag`);
  return name;
}

let installed: ReturnType<typeof tempDir> | undefined;
/**
 * The binary as a node has it: copied out of the checkout into a CNI bin directory with the
 * ratchet-child link beside it (what scripts/install.sh makes). One copy for the whole run:
 * test/support/preload.ts removes it after the last test file.
 */
export function installedBin(): string {
  if (!installed) {
    requireBinary();
    const dir = tempDir("ratchet-bin-");
    try {
      copyFileSync(BIN, join(dir.path, "ratchet"));
      symlinkSync("ratchet", join(dir.path, "ratchet-child"));
    } catch (err) {
      dir[Symbol.dispose]();
      throw err;
    }
    installed = dir;
  }
  return join(installed.path, "ratchet");
}

/** The ratchet-child link beside the installed binary: the node agent's name. */
export function installedChild(): string {
  return join(dirname(installedBin()), "ratchet-child");
}

export function removeInstalledBin(): void {
  installed?.[Symbol.dispose]();
  installed = undefined;
}

/**
 * The argv that runs `cmd` the way a node runs ratchet: in a private mount namespace where
 * an empty tmpfs hides the checkout, so nothing from the source tree or node_modules helps.
 * Arguments appended to it go to `cmd`.
 */
export function hiddenCheckout(cmd: string[]): string[] {
  // "slave": network namespaces mounted later under /run/netns (a shared mount) still show
  // up in here, as they do for a runtime's plugins; the tmpfs stays private to this namespace.
  // A node agent started from here lives on in this namespace and keeps seeing them.
  return [
    "unshare",
    "--mount",
    "--propagation",
    "slave",
    "--",
    "sh",
    "-c",
    'mount -t tmpfs ratchet-hide "$0" && test -z "$(ls -A "$0")" && exec "$@"',
    REPO,
    ...cmd,
  ];
}
