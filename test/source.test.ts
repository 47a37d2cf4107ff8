/**
 * The one file must run unchanged under Node 22.18+, which strips types and
 * refuses what it cannot strip. test/runtimes.test.ts runs it under Node; this
 * catches the usual slip in a second, without Node, in the quick subset.
 */
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { CLI } from "./helpers.ts";

test("safemigrate.ts uses no syntax Node's type stripping refuses (parameter properties, enums, namespaces)", () => {
  const lines = readFileSync(CLI, "utf8").split("\n");
  const refused = lines
    .map((line, index) => ({ line, at: index + 1 }))
    .filter(({ line }) =>
      /constructor\([^)]*\b(readonly|private|public|protected)\s+\w+\s*[:?,)]/.test(line) ||
      /^\s*(export\s+)?(const\s+)?enum\s+\w+/.test(line) ||
      /^\s*(export\s+)?namespace\s+\w+/.test(line)
    )
    .map(({ line, at }) => `safemigrate.ts:${at}: ${line.trim()}`);
  expect(refused).toEqual([]);
});
