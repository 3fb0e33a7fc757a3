import { expect, test } from "bun:test";
import { option } from "../../src/argv.ts";

test("option reads --name VALUE and --name=VALUE, the first one given", () => {
  expect(option(["links", "--config", "/a.conf"], "--config")).toBe("/a.conf");
  expect(option(["--config=/b.conf", "--config", "/c.conf"], "--config")).toBe("/b.conf");
  expect(option(["-o=json"], "-o")).toBe("json");
  expect(option(["--config="], "--config")).toBe("");
  expect(option(["--configs", "x"], "--config")).toBeUndefined();
  expect(option(["--config"], "--config")).toBeUndefined();
  expect(option([], "--config")).toBeUndefined();
});
