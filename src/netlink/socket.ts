// A NETLINK_ROUTE socket and the request loop. Synchronous on purpose: the callers switch
// network namespaces around socket creation, and FFI calls block anyway.
import { Errno, ErrnoError } from "./errors.ts";
import * as libc from "./libc.ts";
import {
  MESSAGE_NAMES,
  Message,
  NETLINK_CAP_ACK,
  NETLINK_EXT_ACK,
  NETLINK_ROUTE,
  NLM_F_ACK,
  NLM_F_DUMP,
  NLM_F_DUMP_INTR,
  NLM_F_REQUEST,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSG_NOOP,
  type NlMsg,
  type Piece,
  type Attr,
  SOL_NETLINK,
  align,
  parseError,
  parseMessages,
} from "./nl.ts";
import { step } from "../steps.ts";

/** How long a request waits for the kernel before failing with ETIMEDOUT. */
export const DEFAULT_TIMEOUT_MS = 10_000;
/** How many times a dump the kernel marked inconsistent (NLM_F_DUMP_INTR) is redone. */
export const DUMP_RETRIES = 24;
/**
 * After the first few at once, a redo waits a little (growing, 200 ms at most; about 3 s in
 * all): thousands of links just brought up keep changing their IPv6 addresses for a second
 * or two (duplicate address detection), and a dump of them all is interrupted each time.
 */
const dumpPause = (attempt: number) => (attempt < 4 ? 0 : Math.min(200, 10 * (attempt - 3)));
/**
 * Requests per sendmsg in changeAll. The kernel queues one ack per request on our socket
 * while it works through them, and drops acks that overflow the receive buffer: 64 small
 * acks (a skb of ~1 KiB each) fit the default 208 KiB with room to spare.
 */
export const BATCH_REQUESTS = 64;

// Dumps arrive in datagrams of at most 32 KiB (the kernel's cap); 64 KiB leaves room for an
// error that echoes a large request. One buffer serves every socket: all I/O is synchronous
// and each datagram is copied out before the next receive.
const RECV_BUF = new Uint8Array(65536);
const SENDER = new Uint8Array(12);
// struct sockaddr_nl of the kernel: family AF_NETLINK, port id 0.
const KERNEL = new Uint8Array(12);
new DataView(KERNEL.buffer).setUint16(0, libc.AF_NETLINK, true);

let nextSeq = (Date.now() & 0x7fffffff) >>> 0;

/** Requests this process sent, by result: "ok" or the errno name of the failure (for metrics). */
export const requestResults = new Map<string, number>();
function tally(result: string): void {
  requestResults.set(result, (requestResults.get(result) ?? 0) + 1);
}

export class NetlinkSocket implements Disposable {
  /** How many dumps, process-wide, were redone because the kernel marked them interrupted. */
  static redoneDumps = 0;
  private closed = false;
  private constructor(
    readonly fd: number,
    /** The port id the kernel gave this socket. */
    readonly portId: number,
  ) {}

  /** Opens a NETLINK_ROUTE socket in the calling thread's current network namespace. */
  static open(timeoutMs = DEFAULT_TIMEOUT_MS): NetlinkSocket {
    const fd = libc.socket(libc.AF_NETLINK, libc.SOCK_RAW | libc.SOCK_CLOEXEC, NETLINK_ROUTE);
    try {
      libc.setsockoptInt(fd, SOL_NETLINK, NETLINK_EXT_ACK, 1, "NETLINK_EXT_ACK");
      // Errors need not echo the whole request back.
      libc.setsockoptInt(fd, SOL_NETLINK, NETLINK_CAP_ACK, 1, "NETLINK_CAP_ACK");
      const tv = new BigInt64Array([BigInt(Math.floor(timeoutMs / 1000)), BigInt((timeoutMs % 1000) * 1000)]);
      libc.setsockopt(fd, libc.SOL_SOCKET, libc.SO_RCVTIMEO, new Uint8Array(tv.buffer), "SO_RCVTIMEO");
      libc.bind(fd, KERNEL);
      const addr = new Uint8Array(12);
      libc.getsockname(fd, addr);
      return new NetlinkSocket(fd, new DataView(addr.buffer).getUint32(4, true));
    } catch (err) {
      libc.close(fd);
      throw err;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    libc.close(this.fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** A change (NEW/DEL/SET): sent with NLM_F_ACK; returns once the kernel acknowledged it. */
  change(type: number, flags: number, header: Piece, attrs: Attr[]): void {
    this.exchange(new Message(type, NLM_F_REQUEST | NLM_F_ACK | flags, header, attrs), false);
  }

  /**
   * Several changes, each with NLM_F_ACK: sent `perSend` per sendmsg, their acks read
   * together (answers other than acks, e.g. to a GET, are skipped: fewer per sendmsg then).
   * The kernel acts on each message in order and answers each; one failing does not stop the
   * next. Returns, per message, undefined (done) or its ErrnoError. A request
   * that depends on an earlier one (an address on a link just created) must be sent only
   * once that one is known to be done, in a later call.
   */
  changeAll(msgs: Message[], perSend = BATCH_REQUESTS): Array<ErrnoError | undefined> {
    if (this.closed) throw new Error("netlink socket is closed");
    const done = step("netlink");
    try {
      return this.sendAll(msgs, perSend);
    } finally {
      done();
    }
  }

  private sendAll(msgs: Message[], perSend: number): Array<ErrnoError | undefined> {
    const out: Array<ErrnoError | undefined> = new Array(msgs.length).fill(undefined);
    for (let start = 0; start < msgs.length; start += perSend) {
      const chunk = msgs.slice(start, start + perSend);
      const bySeq = new Map<number, number>();
      let size = 0;
      for (const m of chunk) size += align(m.length);
      const buf = new Uint8Array(size);
      const view = new DataView(buf.buffer);
      let o = 0;
      chunk.forEach((m, i) => {
        m.seq = nextSeq = (nextSeq + 1) >>> 0;
        bySeq.set(m.seq, start + i);
        m.write(view, o);
        o += align(m.length);
      });
      libc.sendto(this.fd, buf, 0, KERNEL);
      while (bySeq.size > 0) {
        for (const m of this.receive(`${chunk.length} requests`)) {
          const at = bySeq.get(m.seq);
          if (at === undefined || m.type !== NLMSG_ERROR) continue;
          bySeq.delete(m.seq);
          const e = parseError(m);
          const type = msgs[at]?.type ?? 0;
          if (e.error !== 0)
            out[at] = new ErrnoError(-e.error, MESSAGE_NAMES[type] ?? `type ${type}`, e.message);
        }
      }
    }
    return out;
  }

  /** One datagram's messages that come from the kernel and are meant for this socket. */
  private receive(op: string): NlMsg[] {
    for (;;) {
      let n: number;
      try {
        n = libc.recvfrom(this.fd, RECV_BUF, libc.MSG_TRUNC, SENDER);
      } catch (err) {
        if (err instanceof ErrnoError && err.errno === Errno.EAGAIN)
          throw new ErrnoError(Errno.ETIMEDOUT, op, "", "got no answer in time");
        throw err;
      }
      if (n > RECV_BUF.byteLength)
        throw new ErrnoError(
          Errno.EMSGSIZE,
          op,
          "",
          `answer of ${n} bytes does not fit the ${RECV_BUF.byteLength}-byte buffer`,
        );
      // Only the kernel (port id 0) may answer; anything else is not ours to read.
      if (new DataView(SENDER.buffer).getUint32(4, true) !== 0) continue;
      return parseMessages(RECV_BUF.slice(0, n)).filter((m) => m.pid === this.portId);
    }
  }

  /** A single GET: the kernel's answer (one message) followed by the ack. */
  get(type: number, header: Piece, attrs: Attr[]): NlMsg {
    const first = this.exchange(new Message(type, NLM_F_REQUEST | NLM_F_ACK, header, attrs), false).msgs[0];
    if (first === undefined)
      throw new ErrnoError(Errno.EPROTO, MESSAGE_NAMES[type] ?? `type ${type}`, "", "got no answer");
    return first;
  }

  /** A dump: every message until NLMSG_DONE, redone when the kernel reports it inconsistent. */
  dump(type: number, header: Piece, attrs: Attr[]): NlMsg[] {
    for (let attempt = 0; ; attempt++) {
      const { msgs, interrupted } = this.exchange(
        new Message(type, NLM_F_REQUEST | NLM_F_DUMP, header, attrs),
        true,
      );
      if (!interrupted) return msgs;
      NetlinkSocket.redoneDumps++;
      if (attempt >= DUMP_RETRIES)
        throw new ErrnoError(
          Errno.EINTR,
          MESSAGE_NAMES[type] ?? `type ${type}`,
          "",
          `dump interrupted ${attempt + 1} times`,
        );
      const pause = dumpPause(attempt);
      if (pause > 0) Bun.sleepSync(pause);
    }
  }

  /**
   * Sends one message as is and collects the answers that carry its sequence number and come
   * from the kernel. Ends at the ack (or error) for a request, at NLMSG_DONE for a dump; fails
   * with ETIMEDOUT when the kernel stays silent past the socket's receive timeout.
   */
  exchange(msg: Message, isDump: boolean): { msgs: NlMsg[]; interrupted: boolean } {
    const done = step("netlink");
    try {
      const answer = this.roundTrip(msg, isDump);
      tally("ok");
      return answer;
    } catch (err) {
      tally(err instanceof ErrnoError ? err.code : "error");
      throw err;
    } finally {
      done();
    }
  }

  private roundTrip(msg: Message, isDump: boolean): { msgs: NlMsg[]; interrupted: boolean } {
    if (this.closed) throw new Error("netlink socket is closed");
    const op = MESSAGE_NAMES[msg.type] ?? `type ${msg.type}`;
    msg.seq = nextSeq = (nextSeq + 1) >>> 0;
    libc.sendto(this.fd, msg.encode(), 0, KERNEL);
    const out: NlMsg[] = [];
    let interrupted = false;
    for (;;) {
      for (const m of this.receive(op)) {
        if (m.seq !== msg.seq) continue; // a late answer to an earlier request
        if (m.flags & NLM_F_DUMP_INTR) interrupted = true;
        if (m.type === NLMSG_NOOP) continue;
        if (m.type === NLMSG_ERROR) {
          const e = parseError(m);
          if (e.error !== 0) throw new ErrnoError(-e.error, op, e.message);
          return { msgs: out, interrupted };
        }
        if (m.type === NLMSG_DONE) {
          const e = parseError(m);
          if (e.error !== 0) throw new ErrnoError(-e.error, op, e.message);
          if (isDump) return { msgs: out, interrupted };
          continue;
        }
        out.push(m);
      }
    }
  }
}
