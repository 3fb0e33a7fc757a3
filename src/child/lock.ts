// At most one child per socket: an exclusive flock on "<socket>.lock". The kernel drops the
// lock when the holder dies, however it dies, so a crashed child never blocks the next one.
import { closeSync, openSync } from "node:fs";
import { tryFlockExclusive } from "../netlink/libc.ts";

export class SocketLock {
  private constructor(
    readonly path: string,
    private fd: number,
  ) {}

  /** Takes the lock, waiting up to waitMs (0: do not wait); undefined when another child holds it. */
  static async acquire(path: string, waitMs: number): Promise<SocketLock | undefined> {
    const fd = openSync(path, "a", 0o600);
    const until = Date.now() + waitMs;
    try {
      for (;;) {
        if (tryFlockExclusive(fd, path)) return new SocketLock(path, fd);
        if (Date.now() >= until) break;
        await new Promise((r) => setTimeout(r, 50));
      }
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    closeSync(fd);
    return undefined;
  }

  release(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}
