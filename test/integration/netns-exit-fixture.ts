// Fixture: makes withNetns unable to switch back (its fds to both namespaces are closed from
// inside), to show the process exits rather than run on in the wrong netns.
// Usage: bun netns-exit-fixture.ts NETNS_PATH
import { closeSync, readdirSync, readlinkSync } from "node:fs";
import { withNetns } from "../../src/netlink/index.ts";

const path = process.argv[2];
if (!path) throw new Error("usage: netns-exit-fixture.ts NETNS_PATH");
withNetns(path, () => {
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith("net:")) closeSync(Number(fd));
    } catch {
      // the directory's own fd, gone by now
    }
  }
});
process.stdout.write("still running after withNetns\n");
