// Validators for every name that can reach a kernel call, an etcd key or a log line.
// Kept free of dependencies so the parent and the child share them.

/** CNI_IFNAME / Linux interface names: 1..15 bytes, not "." or "..", no "/", ":" or whitespace. */
export function interfaceNameProblem(name: string): string | undefined {
  const bytes = Buffer.byteLength(name, "utf8");
  if (bytes === 0) return "is empty";
  if (bytes > 15) return `is ${bytes} bytes long, the limit is 15`;
  if (name === "." || name === "..") return "may not be '.' or '..'";
  if (/[/:\s\0]/u.test(name)) return "may not contain '/', ':', NUL or whitespace";
  return undefined;
}

const CONTAINER_ID = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
export function containerIdProblem(id: string): string | undefined {
  if (id.length === 0) return "is empty";
  if (id.length > 256) return `is ${id.length} characters long, the limit is 256`;
  if (!CONTAINER_ID.test(id)) return "must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$";
  return undefined;
}

const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** Pod names are DNS-1123 subdomains (253), namespaces DNS-1123 labels (63). */
export function podNameProblem(name: string): string | undefined {
  if (name.length === 0) return "is empty";
  if (name.length > 253) return `is ${name.length} characters long, the limit is 253`;
  if (!DNS1123_SUBDOMAIN.test(name)) return "is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.')";
  return undefined;
}

export function namespaceProblem(name: string): string | undefined {
  if (name.length === 0) return "is empty";
  if (name.length > 63) return `is ${name.length} characters long, the limit is 63`;
  if (!DNS1123_LABEL.test(name)) return "is not a DNS-1123 label (lower-case letters, digits and '-')";
  return undefined;
}

/** Renders a value for an error message: quoted, control characters escaped, long values cut. */
export function show(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}...` : value);
  const s = JSON.stringify(value) ?? String(value);
  return s.length > 80 ? `${s.slice(0, 80)}...` : s;
}
