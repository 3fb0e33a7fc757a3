/** CNI error codes (SPEC.md "Error"), plus ratchet's own from 100 up. */
export const Code = {
  IncompatibleVersion: 1,
  UnsupportedField: 2,
  UnknownContainer: 3,
  InvalidEnv: 4,
  IOFailure: 5,
  DecodeFailure: 6,
  InvalidConfig: 7,
  TryAgainLater: 11,
  PluginNotAvailable: 50,
  PluginNotAvailableLimited: 51,
  /** A delegate plugin could not be found or run. */
  DelegateFailed: 100,
  /** A netlink operation failed. */
  Netlink: 101,
  /** The coordination store (etcd) refused or failed a request. */
  Store: 102,
  /** A pod's ratchet labels or annotation are invalid. */
  InvalidPodSpec: 103,
  /** A CHECK found a link missing or different from what it should be. */
  CheckFailed: 104,
  /** Anything else that went wrong inside ratchet. */
  Internal: 110,
} as const;
export type CodeValue = (typeof Code)[keyof typeof Code];

/** An error that maps onto a CNI error result. Everything thrown to the entry point becomes one. */
export class CniError extends Error {
  override name = "CniError";
  constructor(
    readonly code: number,
    message: string,
    readonly details: string = "",
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  toJSON(cniVersion: string): { cniVersion: string; code: number; msg: string; details?: string } {
    const out: { cniVersion: string; code: number; msg: string; details?: string } = {
      cniVersion,
      code: this.code,
      msg: this.message,
    };
    if (this.details) out.details = this.details;
    return out;
  }
}

/** Turns anything thrown into a CniError, keeping the cause chain in `details`. */
export function toCniError(err: unknown): CniError {
  if (err instanceof CniError) return err;
  const e = err instanceof Error ? err : new Error(String(err));
  const causes: string[] = [];
  for (let c: unknown = e.cause; c instanceof Error && causes.length < 5; c = c.cause) causes.push(c.message);
  // Errors from lower layers (netlink, store) may carry the CNI code they map to.
  const code = "cniCode" in e && typeof e.cniCode === "number" ? e.cniCode : Code.Internal;
  return new CniError(code, e.message, causes.join(": "), { cause: e });
}

// Typed failures the layers tell apart by class, never by message text.

/** etcd could not be reached or did not answer in time: the caller may retry (code 11). */
export class StoreUnavailableError extends CniError {
  override name = "StoreUnavailableError";
  constructor(message: string, options?: { cause?: unknown }) {
    super(Code.TryAgainLater, message, "", options);
  }
}

/** etcd answered and refused the request (permission, limits): code 102. */
export class StoreRefusedError extends CniError {
  override name = "StoreRefusedError";
  constructor(message: string, options?: { cause?: unknown }) {
    super(Code.Store, message, "", options);
  }
}

/** The node agent could not be reached, or went away mid-request: code 11. */
export class AgentUnavailableError extends CniError {
  override name = "AgentUnavailableError";
  constructor(message: string, details = "", options?: { cause?: unknown }) {
    super(Code.TryAgainLater, message, details, options);
  }
}

/** An interface ratchet needs exists and does not carry ratchet's mark for the link: code 101. */
export class NotOursError extends CniError {
  override name = "NotOursError";
  constructor(message: string) {
    super(Code.Netlink, message);
  }
}
