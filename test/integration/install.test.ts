import { describe, expect, test } from "bun:test";
import { copyFileSync, readdirSync, readlinkSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { BIN, REPO, requireBinary, run, tempDir } from "../support/env.ts";

const INSTALL = join(REPO, "scripts", "install.sh");

describe("scripts/install.sh", () => {
  test("installs the binary and the ratchet-child link; a second run changes nothing", async () => {
    requireBinary();
    using dir = tempDir();
    const target = join(dir.path, "cni", "bin");
    const first = await run([INSTALL, target]);
    expect(first.code).toBe(0);
    expect(first.stdout).toContain(`installed ${target}/ratchet`);
    expect(readlinkSync(join(target, "ratchet-child"))).toBe("ratchet");
    expect(statSync(join(target, "ratchet")).mode & 0o777).toBe(0o755);
    const inode = statSync(join(target, "ratchet")).ino;

    const second = await run([INSTALL, target]);
    expect(second.code).toBe(0);
    expect(second.stdout).toBe(`install: ${target}/ratchet is up to date\n`);
    expect(statSync(join(target, "ratchet")).ino).toBe(inode);
    expect(readdirSync(target).sort()).toEqual(["ratchet", "ratchet-child"]);

    const v = await run([join(target, "ratchet-child"), "--version"]);
    expect(v.stdout).toContain("mode child");
  });

  test("replaces a binary that is executing, by rename, without 'Text file busy'", async () => {
    requireBinary();
    using dir = tempDir();
    const target = join(dir.path, "bin");
    // An older, different "ratchet" already installed: the real binary with bytes appended.
    await run([INSTALL, target]);
    const old = join(target, "ratchet");
    copyFileSync(BIN, join(dir.path, "old"));
    writeFileSync(join(dir.path, "old"), Buffer.from("old-build"), { flag: "a" });
    copyFileSync(join(dir.path, "old"), old);
    const oldInode = statSync(old).ino;

    // Keep the old binary executing: as a CNI plugin it waits for its config on stdin.
    const running = Bun.spawn({
      cmd: [old],
      env: { CNI_COMMAND: "VERSION" },
      stdin: "pipe",
      stdout: "pipe",
      stderr: "pipe",
    });
    try {
      const r = await run([INSTALL, target]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(r.stdout).toContain("installed");
      expect(statSync(old).ino).not.toBe(oldInode);
      expect(running.exitCode).toBeNull(); // the old process never noticed
    } finally {
      running.stdin.end();
      await running.exited;
    }
    expect(running.exitCode).toBe(0);
    expect(readdirSync(target).sort()).toEqual(["ratchet", "ratchet-child"]);
    const v = await run([join(target, "ratchet"), "--version"]);
    expect(v.code).toBe(0);
  });
});
