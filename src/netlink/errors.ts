// Errors of the netlink layer. Every one carries `cniCode` (Code.Netlink) so the entry point
// maps it onto a CNI error result without knowing this module.
import { Code } from "../cni/errors.ts";

// errno numbers and their symbolic names, from asm-generic/errno-base.h and errno.h (Linux).
const ERRNO_TABLE =
  "1 EPERM 2 ENOENT 3 ESRCH 4 EINTR 5 EIO 6 ENXIO 7 E2BIG 8 ENOEXEC 9 EBADF 10 ECHILD 11 EAGAIN " +
  "12 ENOMEM 13 EACCES 14 EFAULT 15 ENOTBLK 16 EBUSY 17 EEXIST 18 EXDEV 19 ENODEV 20 ENOTDIR " +
  "21 EISDIR 22 EINVAL 23 ENFILE 24 EMFILE 25 ENOTTY 26 ETXTBSY 27 EFBIG 28 ENOSPC 29 ESPIPE " +
  "30 EROFS 31 EMLINK 32 EPIPE 33 EDOM 34 ERANGE 35 EDEADLK 36 ENAMETOOLONG 37 ENOLCK 38 ENOSYS " +
  "39 ENOTEMPTY 40 ELOOP 42 ENOMSG 43 EIDRM 61 ENODATA 62 ETIME 71 EPROTO 74 EBADMSG 75 EOVERFLOW " +
  "77 EBADFD 84 EILSEQ 88 ENOTSOCK 89 EDESTADDRREQ 90 EMSGSIZE 91 EPROTOTYPE 92 ENOPROTOOPT " +
  "93 EPROTONOSUPPORT 94 ESOCKTNOSUPPORT 95 EOPNOTSUPP 96 EPFNOSUPPORT 97 EAFNOSUPPORT 98 EADDRINUSE " +
  "99 EADDRNOTAVAIL 100 ENETDOWN 101 ENETUNREACH 102 ENETRESET 103 ECONNABORTED 104 ECONNRESET " +
  "105 ENOBUFS 106 EISCONN 107 ENOTCONN 108 ESHUTDOWN 109 ETOOMANYREFS 110 ETIMEDOUT 111 ECONNREFUSED " +
  "112 EHOSTDOWN 113 EHOSTUNREACH 114 EALREADY 115 EINPROGRESS 116 ESTALE 122 EDQUOT 125 ECANCELED " +
  "130 EOWNERDEAD 131 ENOTRECOVERABLE 132 ERFKILL 133 EHWPOISON";
const ERRNO_NAMES = new Map<number, string>();
{
  const parts = ERRNO_TABLE.split(" ");
  for (let i = 0; i + 1 < parts.length; i += 2) ERRNO_NAMES.set(Number(parts[i]), parts[i + 1] as string);
}

/** Linux errno numbers this layer tests for by name. */
export const Errno = {
  ENOENT: 2,
  EINTR: 4,
  EAGAIN: 11,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  ENOTDIR: 20,
  EINVAL: 22,
  ENOTTY: 25,
  EMSGSIZE: 90,
  EOPNOTSUPP: 95,
  EPROTO: 71,
  ETIMEDOUT: 110,
} as const;

/** The symbolic name of an errno ("EEXIST"), or "E<n>" for one this table does not know. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `E${errno}`;
}

// The C library's text for an errno; installed by libc.ts so this file stays free of FFI
// (the codec and its unit tests load without libc).
let describeErrno: (errno: number) => string = () => "";
export function setErrnoDescriber(fn: (errno: number) => string): void {
  describeErrno = fn;
}

/** "File exists (EEXIST)": the C library's text and the symbolic name. */
export function errnoText(errno: number): string {
  const text = describeErrno(errno);
  return text ? `${text} (${errnoName(errno)})` : errnoName(errno);
}

/**
 * A failed system call, or a netlink request the kernel refused (then `syscall` names the
 * request, e.g. "RTM_NEWLINK", and `extack` holds the kernel's extended-ack text, if any).
 */
export class ErrnoError extends Error {
  override name = "ErrnoError";
  readonly cniCode: number = Code.Netlink;
  /** Symbolic errno name, e.g. "EEXIST". */
  readonly code: string;
  constructor(
    readonly errno: number,
    readonly syscall: string,
    readonly extack = "",
    detail = "",
  ) {
    super(`${syscall}${detail ? ` ${detail}` : ""}: ${errnoText(errno)}${extack ? `: ${extack}` : ""}`);
    this.code = errnoName(errno);
  }
}

/**
 * A netlink operation that failed, with what it was doing and on what. `errno`/`code` are
 * those of the underlying failure when there is one.
 */
export class NetlinkError extends Error {
  override name = "NetlinkError";
  readonly cniCode: number = Code.Netlink;
  readonly errno: number | undefined;
  readonly code: string | undefined;
  constructor(message: string, options?: { cause?: unknown; errno?: number }) {
    super(message, options);
    this.errno = options?.errno;
    this.code = options?.errno === undefined ? undefined : errnoName(options.errno);
  }
}

/** The link asked for does not exist (ENODEV from the kernel). DEL treats it as done. */
export class LinkNotFoundError extends NetlinkError {
  override name = "LinkNotFoundError";
}

/** The netns path does not exist or is not a network namespace. DEL treats it as done. */
export class NetnsNotFoundError extends NetlinkError {
  override name = "NetnsNotFoundError";
}

/**
 * The kernel has no qdisc of this kind: its module (sch_<kind>) is neither built in nor
 * loaded, and the kernel could not load it. Told by the kernel's answer, not its version.
 */
export class QdiscKindUnsupported extends NetlinkError {
  override name = "QdiscKindUnsupported";
  /** The module that provides the kind, e.g. "sch_netem". */
  readonly module: string;
  constructor(
    readonly kind: string,
    what: string,
    cause: ErrnoError,
  ) {
    const module = `sch_${kind}`;
    super(
      `failed to ${what}: this kernel has no ${kind} qdisc (${module} is not loaded and could not be ` +
        `loaded; run \`modprobe ${module}\` on the node, or use a kernel built with it): ` +
        `${errnoText(cause.errno)}${cause.extack ? `: ${cause.extack}` : ""}`,
      { cause, errno: cause.errno },
    );
    this.module = module;
  }
}

/** How messages name a namespace: the path, or the current one when none is given. */
export function inNetns(ns: string | undefined): string {
  return ns === undefined ? "in the current netns" : `in netns ${JSON.stringify(ns)}`;
}
