// Prints the failed tests of a bun junit report (scripts/test.sh's `--reporter=junit` file),
// each with the head of its failure: the test run's own output is long, and a log that keeps
// only its end would otherwise lose why a test failed.
//   bun scripts/failures.ts JUNIT_XML [LINES_PER_FAILURE]
import { readFileSync } from "node:fs";

const [file, lines = "30"] = process.argv.slice(2);
if (!file) {
  console.error("usage: bun scripts/failures.ts JUNIT_XML [LINES_PER_FAILURE]");
  process.exit(2);
}
const perFailure = Number(lines);

const fromXml = (s: string) =>
  s
    .replace(/&#(\d+);/g, (_, n: string) => String.fromCharCode(Number(n)))
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&amp;/g, "&");

const xml = readFileSync(file, "utf8");
const out: string[] = [];
// Suites nest (describe blocks); a test case names its file. A passing case is one empty
// element; a failing one holds its failure.
const cases = xml.matchAll(/<testcase\b([^>]*?)(?:\/>|>([\s\S]*?)<\/testcase>)/g);
for (const [, attrs = "", body = ""] of cases) {
  const failure = /<failure[^>]*>([\s\S]*?)<\/failure>/.exec(body);
  if (!failure) continue;
  const attr = (name: string) => fromXml(new RegExp(`\\b${name}="([^"]*)"`).exec(attrs)?.[1] ?? "");
  const text = fromXml(failure[1] ?? "")
    .trimEnd()
    .split("\n");
  out.push(`--- ${attr("file")}: ${attr("name")}`);
  out.push(...text.slice(0, perFailure).map((l) => `    ${l}`));
  if (text.length > perFailure) out.push(`    ... (${text.length - perFailure} more lines)`);
}
// At most 120 lines in all: the first failures matter most, the count says the rest.
const shown = out.slice(0, 120);
if (out.length > shown.length) shown.push(`... (${out.length - shown.length} more lines of failures)`);
if (out.length > 0) console.error(`failed tests, and why:\n${shown.join("\n")}`);
