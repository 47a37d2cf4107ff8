import { parse, fingerprint, normalize } from "libpg-query";
const lines = [];
for (let i = 1; i <= 2600; i++) lines.push(`insert into big_items (id, name, note, amount) values (${i}, 'item ${i}', 'note ${i}', ${i % 1000});`);
const sql = lines.join("\n");
await parse("select 1");
for (const [name, f] of [["parse", parse], ["fingerprint", fingerprint], ["normalize", normalize]] as const) {
  const t = performance.now(); for (let k = 0; k < 20; k++) await f(sql); console.log(name, ((performance.now() - t)/20).toFixed(1), "ms per 2600 stmts");
}
try { await fingerprint("select 1; insert into x valuesx (1); select 2"); } catch (e) { console.log("fp err:", (e as Error).message, JSON.stringify(e)); }
