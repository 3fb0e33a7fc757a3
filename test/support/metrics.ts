// Reading an agent's /metrics in tests: a strict parser of the Prometheus text format (it
// throws on anything a Prometheus server would refuse, so every scrape is also a format
// check), lookups by name and labels, and a free loopback port for metrics_address.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Scrape {
  text: string;
  samples: Sample[];
  /** Family name -> type, from the # TYPE lines. */
  types: Map<string, string>;
  help: Map<string, string>;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** The family a sample belongs to (histogram samples carry suffixes). */
function familyOf(name: string, types: Map<string, string>): string | undefined {
  if (types.has(name)) return name;
  for (const suffix of ["_bucket", "_sum", "_count"]) {
    const base = name.endsWith(suffix) ? name.slice(0, -suffix.length) : undefined;
    if (base && types.get(base) === "histogram") return base;
  }
  return undefined;
}

function parseLabels(text: string, line: string): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < text.length) {
    const eq = text.indexOf("=", i);
    const name = text.slice(i, eq);
    if (eq < 0 || !LABEL.test(name)) throw new Error(`bad label name in: ${line}`);
    if (text[eq + 1] !== '"') throw new Error(`label value not quoted in: ${line}`);
    let j = eq + 2;
    let value = "";
    for (; j < text.length && text[j] !== '"'; j++) {
      if (text[j] === "\\") {
        const n = text[++j];
        if (n === "n") value += "\n";
        else if (n === "\\" || n === '"') value += n;
        else throw new Error(`bad escape \\${n} in: ${line}`);
      } else value += text[j];
    }
    if (j >= text.length) throw new Error(`unterminated label value in: ${line}`);
    if (name in out) throw new Error(`label ${name} twice in: ${line}`);
    out[name] = value;
    i = j + 1;
    if (text[i] === ",") i++;
    else if (i < text.length) throw new Error(`expected "," after a label in: ${line}`);
  }
  return out;
}

/** Parses an exposition; throws on a format error, a sample before its # TYPE, a split family. */
export function parseExposition(text: string): Scrape {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  const help = new Map<string, string>();
  const done = new Set<string>();
  let current: string | undefined;
  if (!text.endsWith("\n")) throw new Error("the exposition does not end with a newline");
  for (const line of text.slice(0, -1).split("\n")) {
    if (line.startsWith("# HELP ") || line.startsWith("# TYPE ")) {
      const rest = line.slice(7);
      const sp = rest.indexOf(" ");
      const name = rest.slice(0, sp);
      if (!NAME.test(name)) throw new Error(`bad metric name in: ${line}`);
      if (done.has(name) || (current !== undefined && current !== name && types.has(name)))
        throw new Error(`family ${name} appears twice`);
      if (current !== undefined && current !== name) done.add(current);
      current = name;
      if (line.startsWith("# HELP ")) help.set(name, rest.slice(sp + 1));
      else {
        const type = rest.slice(sp + 1);
        if (!["counter", "gauge", "histogram", "summary", "untyped"].includes(type))
          throw new Error(`bad type in: ${line}`);
        types.set(name, type);
      }
      continue;
    }
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([^{\s]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`bad sample line: ${line}`);
    const [, name, labelText, valueText] = m as unknown as [string, string, string | undefined, string];
    const family = familyOf(name, types);
    if (!family) throw new Error(`sample before its # TYPE: ${line}`);
    if (family !== current) throw new Error(`sample of ${family} outside its family: ${line}`);
    const value = valueText === "+Inf" ? Infinity : valueText === "-Inf" ? -Infinity : Number(valueText);
    if (Number.isNaN(value) && valueText !== "NaN") throw new Error(`bad value in: ${line}`);
    samples.push({ name, labels: labelText ? parseLabels(labelText, line) : {}, value });
  }
  return { text, samples, types, help };
}

/** Samples of `name` whose labels include `labels`. */
export function find(s: Scrape, name: string, labels: Record<string, string> = {}): Sample[] {
  return s.samples.filter(
    (x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v),
  );
}

/** The one value of `name` with these labels; undefined when there is none, an error when several. */
export function value(s: Scrape, name: string, labels: Record<string, string> = {}): number | undefined {
  const found = find(s, name, labels);
  if (found.length > 1) throw new Error(`${found.length} samples of ${name} match ${JSON.stringify(labels)}`);
  return found[0]?.value;
}

export async function get(address: string, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://${address}${path}`, { signal: AbortSignal.timeout(10_000) });
  return { status: res.status, body: await res.text() };
}

/** GET /metrics, parsed (and so checked). */
export async function scrape(address: string): Promise<Scrape> {
  const res = await fetch(`http://${address}/metrics`, { signal: AbortSignal.timeout(10_000) });
  if (res.status !== 200) throw new Error(`GET /metrics: HTTP ${res.status}: ${await res.text()}`);
  if (!res.headers.get("content-type")?.startsWith("text/plain; version=0.0.4"))
    throw new Error(`GET /metrics: content type ${res.headers.get("content-type")}`);
  return parseExposition(await res.text());
}

/** A loopback address with a port free now (the agent binds it a moment later). */
export function freeAddress(): string {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = s.port;
  s.stop(true);
  return `127.0.0.1:${port}`;
}
