// Prometheus text exposition (format 0.0.4), written here rather than taken from a library:
// counters, gauges and histograms with labels, and families filled at scrape time. Names use
// base units and `_total` for counters; every family gets its # HELP and # TYPE lines.

export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

export type MetricType = "counter" | "gauge" | "histogram";

/** A label value as the format wants it: backslash, double quote and newline escaped. */
export function escapeLabelValue(v: string): string {
  return /[\\"\n]/.test(v) ? v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n") : v;
}

/** HELP text: backslash and newline escaped. */
export function escapeHelp(s: string): string {
  return s.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

/** `a="x",b="y"` for these names and values, in order (no braces). */
export function labelText(names: readonly string[], values: readonly string[]): string {
  let out = "";
  for (let i = 0; i < names.length; i++) {
    if (i > 0) out += ",";
    out += `${names[i]}="${escapeLabelValue(values[i] ?? "")}"`;
  }
  return out;
}

/** A sample value: integers as they are, +Inf/-Inf/NaN as the format spells them. */
export function formatValue(x: number): string {
  if (Number.isNaN(x)) return "NaN";
  if (x === Number.POSITIVE_INFINITY) return "+Inf";
  if (x === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(x);
}

/** Builds one exposition: families in order, samples grouped under their family. */
export class Exposition {
  private readonly parts: string[] = [];

  family(name: string, type: MetricType, help: string): this {
    this.parts.push(`# HELP ${name} ${escapeHelp(help)}\n# TYPE ${name} ${type}\n`);
    return this;
  }

  /** One sample; `labels` is labelText() output ("" for none). */
  sample(name: string, labels: string, value: number): this {
    this.parts.push(
      labels === "" ? `${name} ${formatValue(value)}\n` : `${name}{${labels}} ${formatValue(value)}\n`,
    );
    return this;
  }

  /** Pre-rendered sample lines of one family (each ending in a newline). */
  lines(text: string): this {
    this.parts.push(text);
    return this;
  }

  /** The exposition in the pieces it was built of (to send one at a time). */
  chunks(): string[] {
    return this.parts;
  }

  text(): string {
    return this.parts.join("");
  }
}

/** A metric family with fixed label names; `write` adds its # HELP, # TYPE and samples. */
export interface Family {
  readonly name: string;
  write(out: Exposition): void;
}

abstract class Labelled<V> implements Family {
  protected readonly series = new Map<string, V>();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
  ) {}
  protected key(values: readonly string[]): string {
    if (values.length !== this.labelNames.length)
      throw new Error(`${this.name} takes ${this.labelNames.length} label values, got ${values.length}`);
    return labelText(this.labelNames, values);
  }
  abstract write(out: Exposition): void;
}

export class Counter extends Labelled<number> {
  inc(values: readonly string[] = [], by = 1): void {
    const k = this.key(values);
    this.series.set(k, (this.series.get(k) ?? 0) + by);
  }
  get(values: readonly string[] = []): number {
    return this.series.get(this.key(values)) ?? 0;
  }
  write(out: Exposition): void {
    out.family(this.name, "counter", this.help);
    for (const [labels, v] of this.series) out.sample(this.name, labels, v);
  }
}

export class Gauge extends Labelled<number> {
  set(values: readonly string[], v: number): void {
    this.series.set(this.key(values), v);
  }
  write(out: Exposition): void {
    out.family(this.name, "gauge", this.help);
    for (const [labels, v] of this.series) out.sample(this.name, labels, v);
  }
}

interface HistogramSeries {
  counts: number[];
  sum: number;
  count: number;
}

export class Histogram extends Labelled<HistogramSeries> {
  constructor(
    name: string,
    help: string,
    labelNames: readonly string[],
    readonly buckets: readonly number[],
  ) {
    super(name, help, labelNames);
  }
  observe(values: readonly string[], v: number): void {
    const k = this.key(values);
    let s = this.series.get(k);
    if (!s) {
      s = { counts: this.buckets.map(() => 0), sum: 0, count: 0 };
      this.series.set(k, s);
    }
    // Counts per bucket are kept non-cumulative; write() sums them up.
    const i = this.buckets.findIndex((b) => v <= b);
    if (i >= 0) s.counts[i] = (s.counts[i] ?? 0) + 1;
    s.sum += v;
    s.count++;
  }
  /** Observations so far for these labels. */
  count(values: readonly string[]): number {
    return this.series.get(this.key(values))?.count ?? 0;
  }
  write(out: Exposition): void {
    out.family(this.name, "histogram", this.help);
    for (const [labels, s] of this.series) {
      const pre = labels === "" ? "" : `${labels},`;
      let acc = 0;
      this.buckets.forEach((b, i) => {
        acc += s.counts[i] ?? 0;
        out.sample(`${this.name}_bucket`, `${pre}le="${formatValue(b)}"`, acc);
      });
      out.sample(`${this.name}_bucket`, `${pre}le="+Inf"`, s.count);
      out.sample(`${this.name}_sum`, labels, s.sum);
      out.sample(`${this.name}_count`, labels, s.count);
    }
  }
}

/** A family whose samples come from a tally kept elsewhere (e.g. requests by result). */
export class TallyCounter implements Family {
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly label: string,
    private readonly tally: () => ReadonlyMap<string, number>,
  ) {}
  write(out: Exposition): void {
    out.family(this.name, "counter", this.help);
    for (const [value, n] of [...this.tally()].sort(([a], [b]) => (a < b ? -1 : 1)))
      out.sample(this.name, labelText([this.label], [value]), n);
  }
}
