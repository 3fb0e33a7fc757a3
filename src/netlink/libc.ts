// The only dlopen of this project: libc, with a typed symbol table. Each wrapper turns a
// failed call into an ErrnoError (never a bare -1) and retries calls a signal interrupted.
import { dlopen, read } from "bun:ffi";
import { Errno, ErrnoError, setErrnoDescriber } from "./errors.ts";

const lib = dlopen("libc.so.6", {
  socket: { args: ["i32", "i32", "i32"], returns: "i32" },
  bind: { args: ["i32", "buffer", "u32"], returns: "i32" },
  // ssize_t sendto(int, const void *, size_t, int, const struct sockaddr *, socklen_t)
  sendto: { args: ["i32", "buffer", "buffer_length", "i32", "buffer", "u32"], returns: "i64" },
  // ssize_t recvfrom(int, void *, size_t, int, struct sockaddr *, socklen_t *)
  recvfrom: { args: ["i32", "buffer", "buffer_length", "i32", "buffer", "buffer"], returns: "i64" },
  setsockopt: { args: ["i32", "i32", "i32", "buffer", "u32"], returns: "i32" },
  getsockname: { args: ["i32", "buffer", "buffer"], returns: "i32" },
  open: { args: ["cstring", "i32", "u32"], returns: "i32" },
  close: { args: ["i32"], returns: "i32" },
  setns: { args: ["i32", "i32"], returns: "i32" },
  ioctl: { args: ["i32", "u64", "u64"], returns: "i32" },
  flock: { args: ["i32", "i32"], returns: "i32" },
  __errno_location: { args: [], returns: "ptr" },
  strerror: { args: ["i32"], returns: "cstring" },
  _exit: { args: ["i32"], returns: "void" },
});
const c = lib.symbols;

setErrnoDescriber((errno) => c.strerror(errno) ?? "");

function lastErrno(): number {
  const p = c.__errno_location();
  return p === null ? 0 : read.i32(p, 0);
}

function check(ret: number | bigint, syscall: string, detail?: string): number {
  const n = Number(ret);
  if (n < 0) throw new ErrnoError(lastErrno(), syscall, "", detail);
  return n;
}

// Calls `fn` again while it fails with EINTR (a signal arrived while it was blocked).
function retrying(fn: () => number | bigint, syscall: string): number {
  for (;;) {
    const n = Number(fn());
    if (n >= 0) return n;
    const errno = lastErrno();
    if (errno !== Errno.EINTR) throw new ErrnoError(errno, syscall);
  }
}

export const AF_NETLINK = 16;
export const SOCK_RAW = 3;
export const SOCK_CLOEXEC = 0o2000000;
export const O_RDONLY = 0;
export const O_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_RCVTIMEO = 20;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const MSG_TRUNC = 0x20;
export const CLONE_NEWNET = 0x40000000;
/** ioctl on an nsfs file: which kind of namespace it is (linux/nsfs.h, _IO(0xb7, 0x3)). */
export const NS_GET_NSTYPE = 0xb703;

export function socket(domain: number, type: number, protocol: number): number {
  return check(c.socket(domain, type, protocol), "socket");
}

export function bind(fd: number, addr: Uint8Array): void {
  check(c.bind(fd, addr, addr.byteLength), "bind");
}

export function getsockname(fd: number, addr: Uint8Array): number {
  const len = new Uint32Array([addr.byteLength]);
  check(c.getsockname(fd, addr, len), "getsockname");
  return len[0] as number;
}

export function setsockopt(fd: number, level: number, name: number, value: Uint8Array, what: string): void {
  check(c.setsockopt(fd, level, name, value, value.byteLength), "setsockopt", what);
}

export function setsockoptInt(fd: number, level: number, name: number, value: number, what: string): void {
  setsockopt(fd, level, name, new Uint8Array(new Int32Array([value]).buffer), what);
}

/** Sends one datagram; returns the bytes sent. */
export function sendto(fd: number, data: Uint8Array, flags: number, addr: Uint8Array): number {
  return retrying(() => c.sendto(fd, data, data, flags, addr, addr.byteLength), "sendto");
}

/** Receives one datagram into `buf`; `addr` gets the sender. Returns the datagram's length. */
export function recvfrom(fd: number, buf: Uint8Array, flags: number, addr: Uint8Array): number {
  const len = new Uint32Array([addr.byteLength]);
  return retrying(() => c.recvfrom(fd, buf, buf, flags, addr, len), "recvfrom");
}

export function open(path: string, flags: number): number {
  return check(c.open(path, flags, 0), "open", JSON.stringify(path));
}

export function close(fd: number): void {
  // Linux releases the fd even when close reports EINTR: never retry.
  check(c.close(fd), "close");
}

export function setns(fd: number, nstype: number): void {
  check(c.setns(fd, nstype), "setns");
}

/** setns that reports failure by return value, for the path that must not throw. */
export function trySetns(fd: number, nstype: number): number {
  return c.setns(fd, nstype) < 0 ? lastErrno() : 0;
}

export function ioctl(fd: number, request: number, arg: number, what: string): number {
  return check(c.ioctl(fd, request, arg), "ioctl", what);
}

export const LOCK_EX = 2;
export const LOCK_NB = 4;

/** Takes an exclusive lock without waiting; false when another holder has it (EWOULDBLOCK). */
export function tryFlockExclusive(fd: number, what: string): boolean {
  if (c.flock(fd, LOCK_EX | LOCK_NB) === 0) return true;
  const errno = lastErrno();
  if (errno === Errno.EAGAIN) return false;
  throw new ErrnoError(errno, "flock", "", what);
}

/** Ends the process at once: no exit handlers (they might run in the wrong namespace). */
export function exitNow(status: number): never {
  c._exit(status);
  throw new Error("_exit returned");
}
