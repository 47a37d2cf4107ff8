const n = 533000;
const lines = ["create table big_items (id bigint primary key, name text, note text, amount numeric);"];
for (let i = 1; i <= n; i++) lines.push(`insert into big_items (id, name, note, amount) values (${i}, 'item ${i}', 'note ${i}', ${i % 1000});`);
let sql = lines.join("\n") + "\n";
const LEXEME = /--|\/\*|'[^']*(?:''[^']*)*'|['"()$;]/g;
let t = performance.now(); let k = 0;
LEXEME.lastIndex = 0; while (LEXEME.exec(sql)) k++;
console.log("regex only", k, (performance.now() - t).toFixed(0));
t = performance.now(); k = 0;
for (let i = 0; i < sql.length; i++) { const c = sql.charCodeAt(i); if (c === 59 || c === 39 || c === 40 || c===41) k++; }
console.log("charcode loop", k, (performance.now() - t).toFixed(0));
const PUNCT = /[-/'"()$;]/g;
t = performance.now(); k = 0;
PUNCT.lastIndex = 0; while (PUNCT.exec(sql)) k++;
console.log("simple class", k, (performance.now() - t).toFixed(0));
