const n = 533000;
const lines = [];
for (let i = 1; i <= n; i++) lines.push(`insert into big_items (id, name, note, amount) values (${i}, 'item ${i}', 'note ${i}', ${i % 1000});`);
let sql = lines.join("\n") + "\n"; lines.length = 0;
const mem = (l: string) => { Bun.gc(true); console.log(l, "rss MB", (process.memoryUsage().rss/1e6).toFixed(0)); };
mem("generated");
const out = [];
let pos = 0;
for (let i = 0; i < n; i++) { const e = sql.indexOf("\n", pos); const raw = sql.slice(pos, e); const s = raw.slice(0).trim(); out.push({ sql: s, line: i, node: { InsertStmt: {} }, offset: pos }); pos = e + 1; }
mem("objects");
const mode = process.argv[2];
