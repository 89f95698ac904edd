// Holds what the test asks for and reports V8's own figures: one command a line on stdin, one JSON
// line on stdout per command. Commands: "objects MIB" (retained JS objects), "buffer MIB" (a retained,
// filled Buffer: malloc'd outside the V8 heap), "worker MIB" (a worker thread holding its own
// objects), "leak-objects MIB_PER_S", "leak-buffers MIB_PER_S", "stats".
'use strict';
const v8 = require('v8');
const readline = require('readline');
const keep = [];
let worker = null;

function objects(mib) {
  // ~100 bytes of heap per entry in V8 10-11 (object, string, array).
  const n = Math.round(mib * (1 << 20) / 100);
  const chunk = new Array(n);
  for (let i = 0; i < n; i++) chunk[i] = {a: i, b: 'k' + i, c: [i]};
  keep.push(chunk);
}

function buffer(mib) {
  keep.push(Buffer.alloc(mib << 20, 7));
}

function stats() {
  const m = process.memoryUsage();
  const young = v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space') || {};
  return {pid: process.pid, version: process.versions.node, heapTotal: m.heapTotal, heapUsed: m.heapUsed,
          external: m.external, arrayBuffers: m.arrayBuffers, rss: m.rss,
          heap_size_limit: v8.getHeapStatistics().heap_size_limit,
          newSpaceSize: young.space_size || 0, newSpaceUsed: young.space_used_size || 0};
}

function reply(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }

const rl = readline.createInterface({input: process.stdin});
rl.on('line', (line) => {
  const [cmd, arg] = line.trim().split(/\s+/);
  const x = Number(arg || 0);
  if (cmd === 'objects') { objects(x); reply(stats()); }
  else if (cmd === 'buffer') { buffer(x); reply(stats()); }
  else if (cmd === 'leak-objects') { setInterval(() => objects(x / 10), 100); reply(stats()); }
  else if (cmd === 'leak-buffers') { setInterval(() => buffer(Math.max(1, x / 10)), 100); reply(stats()); }
  else if (cmd === 'worker') {
    const { Worker } = require('worker_threads');
    worker = new Worker(`
      const { parentPort } = require('worker_threads');
      const keep = [];
      const n = Math.round(${x} * (1 << 20) / 100);
      for (let i = 0; i < n; i++) keep.push({a: i, b: 'w' + i, c: [i]});
      parentPort.postMessage(process.memoryUsage().heapTotal);
      setInterval(() => keep.length, 1 << 30);
    `, {eval: true});
    worker.once('message', (heapTotal) => reply({...stats(), worker_heapTotal: heapTotal}));
  }
  else if (cmd === 'stats') { reply(stats()); }
  else { reply({error: 'unknown command ' + cmd}); }
});
rl.on('close', () => process.exit(0));
