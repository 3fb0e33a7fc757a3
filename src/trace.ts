// RATCHET_TRACE=1: the time of each step of one CNI call on stderr, so an operator sees where
// a slow ADD spent its time. Off, it costs one branch per step.

export class Trace {
  private readonly started = performance.now();
  constructor(private readonly out: ((line: string) => void) | undefined) {}

  get on(): boolean {
    return this.out !== undefined;
  }

  /** A point in time: milliseconds since the process started (Bun's start included). */
  mark(what: string): void {
    this.out?.(`ratchet trace: ${what} at ${performance.now().toFixed(1)} ms since process start\n`);
  }

  /** Runs `fn` and reports how long it took. */
  async span<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (!this.out) return fn();
    const t0 = performance.now();
    try {
      return await fn();
    } finally {
      this.out(`ratchet trace: ${what} took ${(performance.now() - t0).toFixed(1)} ms\n`);
    }
  }

  total(what: string): void {
    this.out?.(`ratchet trace: ${what} took ${(performance.now() - this.started).toFixed(1)} ms in all\n`);
  }
}

export const NO_TRACE = new Trace(undefined);
