// At most one child per socket: an exclusive flock on "<socket>.lock". The kernel drops the
// lock when the holder dies, however it dies, so a crashed child never blocks the next one.
import { dlopen, FFIType, read } from "bun:ffi";
import { closeSync, openSync } from "node:fs";

const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;

const libc = dlopen("libc.so.6", {
  flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  __errno_location: { args: [], returns: FFIType.ptr },
});

function errno(): number {
  const p = libc.symbols.__errno_location();
  return p === null ? 0 : read.i32(p, 0);
}

export class SocketLock {
  private constructor(
    readonly path: string,
    private fd: number,
  ) {}

  /** Takes the lock, waiting up to waitMs (0: do not wait); undefined when another child holds it. */
  static async acquire(path: string, waitMs: number): Promise<SocketLock | undefined> {
    const fd = openSync(path, "a", 0o600);
    const until = Date.now() + waitMs;
    for (;;) {
      if (libc.symbols.flock(fd, LOCK_EX | LOCK_NB) === 0) return new SocketLock(path, fd);
      const e = errno();
      if (e !== EWOULDBLOCK) {
        closeSync(fd);
        throw new Error(`flock ${path} failed: errno ${e}`);
      }
      if (Date.now() >= until) {
        closeSync(fd);
        return undefined;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  release(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}
