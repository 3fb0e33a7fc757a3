// The compiled binary: mode by invoked name, --version/--help, and that it works alone,
// copied away from the checkout with the checkout hidden, reaching a real etcd.
import { describe, expect, test } from "bun:test";
import { symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  BIN,
  etcdEndpoint,
  hiddenCheckout,
  installedChild,
  requireBinary,
  run,
  tempDir,
} from "../support/env.ts";

describe("compiled binary", () => {
  test("mode comes from the invoked name (argv0) unless --mode overrides it", async () => {
    requireBinary();
    using dir = tempDir();
    symlinkSync(BIN, join(dir.path, "ratchet-child"));
    const child = await run([join(dir.path, "ratchet-child"), "--version"]);
    expect(child.stderr).toBe("");
    expect(child.code).toBe(0);
    expect(child.stdout).toMatch(
      /^ratchet \d+\.\d+\.\d+ \(commit [0-9a-f]+(-dirty)?, build \S+, mode child\)\n$/,
    );

    const parent = await run([BIN, "--version"]);
    expect(parent.stdout).toContain("mode parent");
    const forced = await run([join(dir.path, "ratchet-child"), "--mode=parent", "--version"]);
    expect(forced.stdout).toContain("mode parent");
    const forcedChild = await run([BIN, "--mode=child", "--help"]);
    expect(forcedChild.code).toBe(0);
    expect(forcedChild.stdout).toStartWith("ratchet-child ");
  });

  test("an unknown --mode exits 2 with a message on stderr and nothing on stdout", async () => {
    const r = await run([requireBinary(), "--mode=bogus"]);
    expect(r).toEqual({
      code: 2,
      stdout: "",
      stderr: 'ratchet: unknown mode "bogus": expected parent or child\n',
    });
  });

  test("works copied away with the checkout hidden, and talks to etcd from inside the binary", async () => {
    using dir = tempDir();
    const conf = join(dir.path, "ratchet.conf");
    writeFileSync(
      conf,
      JSON.stringify({ cniVersion: "1.0.0", name: "t", type: "ratchet", etcd_endpoints: [etcdEndpoint()] }),
    );
    // A private mount namespace with an empty tmpfs over the checkout: no source, no node_modules.
    const r = await run(hiddenCheckout([installedChild(), "--check", "--config", conf]));
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as { etcd: { ok: boolean; version: string } };
    expect(out.etcd.ok).toBe(true);
    expect(out.etcd.version).toMatch(/^3\.\d+\.\d+/);
  });

  test("--check reports an unreachable etcd as not ok, exit 1", async () => {
    using dir = tempDir();
    const conf = join(dir.path, "ratchet.conf");
    // Port 1 on loopback: nothing listens there.
    writeFileSync(
      conf,
      JSON.stringify({ name: "t", type: "ratchet", etcd_endpoints: ["http://127.0.0.1:1"] }),
    );
    const r = await run([requireBinary(), "--mode=child", "--check", "--config", conf]);
    expect(r.code).toBe(1);
    expect((JSON.parse(r.stdout) as { etcd: { ok: boolean } }).etcd.ok).toBe(false);
  });
});
