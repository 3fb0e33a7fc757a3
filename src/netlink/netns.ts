// Network namespaces. A socket stays in the netns it was created in, so acting in a pod's
// netns means: enter it, create the socket, come back; synchronously, so no other JS runs
// while this thread is elsewhere.
import { writeSync } from "node:fs";
import { Errno, ErrnoError, NetnsNotFoundError, errnoText } from "./errors.ts";
import * as libc from "./libc.ts";
import { NetlinkSocket } from "./socket.ts";
import { step } from "../steps.ts";

// The calling thread's own netns (setns acts per thread; /proc/self would name the leader's).
const CURRENT_NETNS = "/proc/thread-self/ns/net";

/** An open netns file, closed on dispose. */
export interface NetnsFd extends Disposable {
  readonly fd: number;
  readonly path: string;
}

/**
 * Opens a netns file (/var/run/netns/x, /proc/<pid>/ns/net) and checks that it is a network
 * namespace. A missing path or another kind of file gives NetnsNotFoundError.
 */
export function openNetns(path: string): NetnsFd {
  let fd: number;
  try {
    fd = libc.open(path, libc.O_RDONLY | libc.O_CLOEXEC);
  } catch (err) {
    if (err instanceof ErrnoError && (err.errno === Errno.ENOENT || err.errno === Errno.ENOTDIR)) {
      throw new NetnsNotFoundError(`netns ${JSON.stringify(path)} not found: ${errnoText(err.errno)}`, {
        cause: err,
        errno: err.errno,
      });
    }
    throw err;
  }
  let kind: number;
  try {
    kind = libc.ioctl(fd, libc.NS_GET_NSTYPE, 0, "NS_GET_NSTYPE");
  } catch (err) {
    libc.close(fd);
    // ENOTTY: not an nsfs file at all (a regular file, a directory, an unmounted netns file).
    if (err instanceof ErrnoError && (err.errno === Errno.ENOTTY || err.errno === Errno.EINVAL)) {
      throw new NetnsNotFoundError(
        `${JSON.stringify(path)} is not a network namespace: ${errnoText(err.errno)}`,
        { cause: err, errno: err.errno },
      );
    }
    throw err;
  }
  if (kind !== libc.CLONE_NEWNET) {
    libc.close(fd);
    throw new NetnsNotFoundError(`${JSON.stringify(path)} is a namespace but not a network namespace`);
  }
  let open = true;
  return {
    fd,
    path,
    [Symbol.dispose]() {
      if (open) libc.close(fd);
      open = false;
    },
  };
}

/**
 * Runs `fn` with this thread inside the netns at `path` and always switches back; `undefined`
 * runs it here. `fn` must be synchronous and must not await: only the switch-back keeps the
 * rest of the program in its own namespace. If switching back fails the process exits,
 * because running on in the wrong namespace would damage whatever it touches next.
 */
export function withNetns<T>(path: string | undefined, fn: () => T): T {
  if (path === undefined) return fn();
  const entered = step("netns switch");
  using target = openNetns(path);
  const home = libc.open(CURRENT_NETNS, libc.O_RDONLY | libc.O_CLOEXEC);
  try {
    libc.setns(target.fd, libc.CLONE_NEWNET);
    entered();
    let result: T;
    try {
      result = fn();
    } finally {
      const errno = libc.trySetns(home, libc.CLONE_NEWNET);
      if (errno !== 0) {
        writeSync(
          2,
          `ratchet: cannot return from netns ${JSON.stringify(path)} to the original one: ${errnoText(errno)}; exiting\n`,
        );
        libc.exitNow(70);
      }
    }
    if (result instanceof Promise)
      throw new TypeError("withNetns: the function must be synchronous (it returned a Promise)");
    return result;
  } finally {
    libc.close(home);
  }
}

/** A NETLINK_ROUTE socket living in the netns at `path` (the current one when undefined). */
export function socketIn(path: string | undefined): NetlinkSocket {
  return withNetns(path, () => NetlinkSocket.open());
}
