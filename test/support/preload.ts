// Loaded before every test file (bunfig.toml); its hooks run once for the whole run.
import { afterAll } from "bun:test";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { removePauseImage } from "./cri/pause-image.ts";
import { removeInstalledBin } from "./env.ts";

// Under scripts/test.sh every temporary directory of the tests lives in this run's work
// directory: what is there at the end and was not at the start was left behind.
const work = process.env.RATCHET_TEST_WORK;
const ours = (dir: string) => readdirSync(dir).filter((f) => f.startsWith("ratchet-"));
const before = new Set(work ? ours(work) : []);

afterAll(() => {
  removeInstalledBin();
  removePauseImage();
  if (!work) return;
  const left = ours(work).filter((f) => !before.has(f));
  if (left.length > 0) {
    throw new Error(`tests left temporary directories behind: ${left.map((f) => join(work, f)).join(", ")}`);
  }
});
