// Reads CMSD headers back with an independent parser (@svta/cml-cmsd).
// Usage: node web/tests/cmsd.mjs < headers.json, where the input is a JSON
// array of {"static": "...", "dynamic": "..."}. Prints one JSON line per
// entry: {"static": {...}, "dynamic": [{"value": ..., "params": {...}}]}.
import { decodeCmsdDynamic, decodeCmsdStatic } from '@svta/cml-cmsd';
import { readFileSync } from 'node:fs';

const input = JSON.parse(readFileSync(0, 'utf8'));
for (const h of input) {
  const st = decodeCmsdStatic(h.static);
  const dy = decodeCmsdDynamic(h.dynamic);
  // Tokens decode as Symbols: print their names.
  const plain = (o) => Object.fromEntries(Object.entries(o).map(([k, v]) =>
    [k, typeof v === 'symbol' ? v.description : v]));
  console.log(JSON.stringify({
    static: plain(st),
    dynamic: dy.map((d) => ({ value: d.value, params: plain(d.params ?? {}) })),
  }));
}
