// The plugin <-> agent protocol: newline-delimited JSON over the agent's unix socket. One
// request per line, one response per line, matched by id. The table of methods below is the
// one place that says what each method takes and returns; src/rpc/schemas.ts checks both
// sides of it. Kept free of heavy imports: the plugin loads it on every CNI call.
import type { NetConf } from "../cni/config.ts";
import type { CniEnv } from "../cni/env.ts";
import type { AttachedInterface } from "../cni/result.ts";
import type { StepTimes } from "../steps.ts";
import type { hello } from "../version.ts";

/** A request line (or an answer line) longer than this closes the connection. */
export const MAX_FRAME_BYTES = 1 << 20;
/** The agent's answers may be larger: an ADD of thousands of links lists them all. */
export const MAX_REPLY_BYTES = 64 << 20;

export type Hello = ReturnType<typeof hello>;

/** What the plugin sends about the CNI call: the validated env and config. */
export interface CallParams {
  env: Omit<CniEnv, "args">;
  conf: NetConf;
}

/** The boot (or delegate) network's interface in the pod: the default network-status entry. */
export interface BootNetwork {
  /** The network's name. */
  name: string;
  interface: string;
  /** Addresses without prefix length, as the Multus format has them. */
  ips: string[];
  mac?: string | undefined;
  dns?: Record<string, unknown> | undefined;
}

export interface Attachment {
  containerID: string;
  ifname: string;
}

export interface Methods {
  hello: { params: Record<string, never>; result: Hello };
  /** Stop accepting work, finish what is in flight, exit: a newer binary takes over. */
  drain: { params: Record<string, never>; result: { draining: true } };
  classify: { params: CallParams; result: { eligible: boolean; links: number } };
  attach: {
    params: CallParams & { boot?: BootNetwork | undefined };
    result: { interfaces: AttachedInterface[] };
  };
  /**
   * The boot network's interface, once its plugin has run (beside attach): the default entry
   * of the pod's network-status annotation. A note about a pod, not a CNI call of its own:
   * sent with `note: true`, never answered, so the plugin does not wait for it.
   */
  booted: { params: { pod: { namespace: string; name: string }; boot: BootNetwork }; result: { ok: true } };
  /**
   * owned: true (ratchet had it), false (never), null (cannot tell). The agent says `owned:
   * true` early, in an interim line, when it attached the container itself: the plugin
   * starts the boot network's DEL then, beside the removal of the links.
   */
  detach: { params: CallParams; result: { owned: boolean | null }; interim: { owned: true } };
  check: { params: CallParams; result: { ok: true } };
  status: { params: CallParams; result: { ok: true } };
  gc: { params: CallParams & { valid: Attachment[] }; result: { removed: number } };
}
export type Method = keyof Methods;
// `satisfies` makes the compiler fail when a method is added to the table and not here.
const KNOWN = {
  hello: true,
  drain: true,
  classify: true,
  attach: true,
  booted: true,
  detach: true,
  check: true,
  status: true,
  gc: true,
} as const satisfies Record<Method, true>;

export function isMethod(m: unknown): m is Method {
  return typeof m === "string" && Object.hasOwn(KNOWN, m);
}

/** The methods the plugin may send as a note (no answer): what it tells, not what it asks. */
export const NOTES = { booted: true } as const satisfies Partial<Record<Method, true>>;
export type NoteMethod = keyof typeof NOTES;

export function isNote(m: Method): m is NoteMethod {
  return Object.hasOwn(NOTES, m);
}

export interface Request<M extends Method = Method> {
  id: number;
  method: M;
  /** Epoch milliseconds after which the caller no longer waits: the agent stops then too. */
  deadline: number;
  params: Methods[M]["params"];
  /** RATCHET_TRACE=1: the answer carries the agent's time by kind of work (`steps`). */
  trace?: boolean;
  /** A note (a NoteMethod): the agent runs it and sends no answer, even when the caller has gone. */
  note?: boolean;
}

export interface WireError {
  code: number;
  msg: string;
  details?: string;
}

export type Response<M extends Method = Method> = (
  | { id: number; ok: true; result: Methods[M]["result"] }
  | { id: number; ok: false; error: WireError }
) & { steps?: StepTimes };

/** What a method may say before its answer (a line `{ id, interim }`), and its handler's way to. */
export type InterimOf<M extends Method> = Methods[M] extends { interim: infer I } ? I : never;
export type Interim = (payload: Record<string, unknown>) => void;

/** Splits a byte stream into lines; throws when a line grows past the frame limit. */
export class LineReader {
  private buf = "";
  private readonly decoder = new TextDecoder();
  constructor(private readonly limit = MAX_FRAME_BYTES) {}
  push(chunk: Uint8Array): string[] {
    const text = this.decoder.decode(chunk, { stream: true });
    const nl = text.lastIndexOf("\n");
    // Check before joining: an endless line must not grow the buffer past the limit.
    const tail = nl < 0 ? text.length : text.length - nl - 1;
    if ((nl < 0 ? this.buf.length : 0) + tail > this.limit) {
      this.buf = "";
      throw new Error(`a message is longer than ${this.limit} bytes`);
    }
    if (nl < 0) {
      this.buf += text;
      return [];
    }
    const lines = (this.buf + text.slice(0, nl)).split("\n");
    this.buf = text.slice(nl + 1);
    for (const l of lines)
      if (l.length > this.limit) throw new Error(`a message is longer than ${this.limit} bytes`);
    return lines.filter((l) => l !== "");
  }
  /** Bytes waiting for their newline. */
  get pending(): number {
    return this.buf.length;
  }
}
