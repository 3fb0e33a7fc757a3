// The parent <-> child protocol: newline-delimited JSON over the child's unix socket.
// One request per line, one response per line, matched by id. Kept free of heavy imports:
// the parent loads it on every CNI call.
import type { NetConf } from "../cni/config.ts";
import type { CniEnv } from "../cni/env.ts";

export const MAX_FRAME_BYTES = 4 << 20;

export interface Hello {
  buildId: string;
  buildTime: number;
  version: string;
  pid: number;
}

/** What the parent sends about the CNI call: the validated env and config. */
export interface CallParams {
  env: Omit<CniEnv, "args">;
  conf: NetConf;
}

export interface Methods {
  hello: { params: Record<string, never>; result: Hello };
  /** Stop accepting work, finish what is in flight, exit: a newer binary takes over. */
  drain: { params: Record<string, never>; result: { draining: true } };
  classify: { params: CallParams; result: { eligible: boolean; links: number } };
  attach: {
    params: CallParams;
    result: {
      interfaces: Array<{
        iface: { name: string; mac?: string; sandbox?: string; mtu?: number };
        ips: string[];
      }>;
    };
  };
  detach: { params: CallParams; result: { owned: boolean | null } };
  check: { params: CallParams; result: { ok: true } };
  status: { params: CallParams; result: { ok: true } };
  gc: {
    params: CallParams & { valid: Array<{ containerID: string; ifname: string }> };
    result: { removed: number };
  };
}
export type Method = keyof Methods;

export interface Request<M extends Method = Method> {
  id: number;
  method: M;
  /** Epoch milliseconds after which the caller no longer waits. */
  deadline: number;
  params: Methods[M]["params"];
}

export interface WireError {
  code: number;
  msg: string;
  details?: string;
}

export type Response<M extends Method = Method> =
  | { id: number; ok: true; result: Methods[M]["result"] }
  | { id: number; ok: false; error: WireError };

/** Splits a byte stream into lines; throws when a line grows past the frame limit. */
export class LineReader {
  private buf = "";
  private readonly decoder = new TextDecoder();
  push(chunk: Uint8Array): string[] {
    this.buf += this.decoder.decode(chunk, { stream: true });
    const lines = this.buf.split("\n");
    this.buf = lines.pop() ?? "";
    if (this.buf.length > MAX_FRAME_BYTES)
      throw new Error(`a message is longer than ${MAX_FRAME_BYTES} bytes`);
    return lines.filter((l) => l !== "");
  }
}
