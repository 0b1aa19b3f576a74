// ort_bench.mjs times ONNX Runtime (onnxruntime-node, CPU execution
// provider) on a with-past OPT ONNX model (genckpt -onnx): a prefill of
// --prompt random ids with empty pasts, then --gen decode steps of one
// random id each, feeding the present.* outputs back as
// past_key_values.* inputs (a KV cache, as ORT users decode). One
// untimed warm-up run first, then --reps timed runs; the best is printed
// in `slope bench`'s format:
//
//   prefill  1 x 128 tokens in 52ms: 2461.5 tok/s
//   decode   1 x 64 tokens in 410ms: 156.1 tok/s
//
// --check compares ORT's logits with `slope forward` on the same weights:
// --slope BIN --slope-model M.slope; --check-len ids are run through
// `slope forward` at once and through ORT as a prefill of half of them,
// then one token at a time; it prints the max |Δ| of each part and exits
// 1 when it exceeds --tol.
//
// Usage: node ort_bench.mjs --model M.onnx [--prompt 128] [--gen 64]
//   [--threads N (default THREADS env, 0 or unset: all cores)] [--seed 1]
//   [--reps 1] [--check --slope BIN --slope-model M.slope [--check-len 16]
//   [--tol 1e-3]]
// onnxruntime-node is loaded from ORT_PATH, by default
// <repo>/.cache/npm/ort/node_modules/onnxruntime-node (scripts/testdata.sh
// installs it there).
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

function fail(msg) {
  console.error(`ort_bench: ${msg}`);
  process.exit(2);
}

function parseArgs(argv) {
  const a = {
    model: '', prompt: 128, gen: 64, threads: Number(process.env.THREADS || 0), seed: 1, reps: 1,
    check: false, slope: '', slopeModel: '', checkLen: 16, tol: 1e-3,
  };
  const num = (k, v) => {
    const n = Number(v);
    if (!Number.isFinite(n) || v === undefined) fail(`${k}: not a number: ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => argv[++i];
    switch (k) {
      case '--model': a.model = v(); break;
      case '--prompt': a.prompt = num(k, v()); break;
      case '--gen': a.gen = num(k, v()); break;
      case '--threads': a.threads = num(k, v()); break;
      case '--seed': a.seed = num(k, v()); break;
      case '--reps': a.reps = num(k, v()); break;
      case '--check': a.check = true; break;
      case '--slope': a.slope = v(); break;
      case '--slope-model': a.slopeModel = v(); break;
      case '--check-len': a.checkLen = num(k, v()); break;
      case '--tol': a.tol = num(k, v()); break;
      default: fail(`unknown argument ${k}`);
    }
  }
  if (!a.model) fail('--model is required');
  if (a.prompt < 1 || a.gen < 0 || a.reps < 1) fail('need --prompt >= 1, --gen >= 0, --reps >= 1');
  if (a.check && (!a.slope || !a.slopeModel)) fail('--check needs --slope and --slope-model');
  if (a.check && a.checkLen < 2) fail('--check-len must be at least 2');
  return a;
}

// mulberry32: a small seeded PRNG.
function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const ortPath = process.env.ORT_PATH || path.join(here, '..', '..', '.cache', 'npm', 'ort', 'node_modules', 'onnxruntime-node');
  let ort;
  try {
    ort = require(ortPath);
  } catch (e) {
    fail(`cannot load onnxruntime-node from ${ortPath} (bench/ort.sh installs it): ${e.message}`);
  }
  const threads = a.threads > 0 ? a.threads : (os.availableParallelism ? os.availableParallelism() : os.cpus().length);
  const t0 = performance.now();
  const session = await ort.InferenceSession.create(a.model, {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    logSeverityLevel: 3,
  });
  const load = performance.now() - t0;

  const pasts = session.inputNames.filter((n) => n.startsWith('past_key_values.'));
  if (pasts.length === 0 || !session.inputNames.includes('attention_mask')) {
    fail(`${a.model}: not a with-past model (inputs ${session.inputNames.join(', ')})`);
  }
  const meta = (list, name) => list.find((m) => m.name === name);
  const pastShape = meta(session.inputMetadata, pasts[0])?.shape ?? [];
  const heads = pastShape[1], headDim = pastShape[3];
  const vocab = (meta(session.outputMetadata, 'logits')?.shape ?? [])[2];
  if (![heads, headDim, vocab].every((d) => Number.isInteger(d) && d > 0)) {
    fail(`${a.model}: cannot read heads, head_dim and vocab from the model's shapes`);
  }
  const i64 = (arr, dims) => new ort.Tensor('int64', BigInt64Array.from(arr, BigInt), dims);
  const emptyPast = new ort.Tensor('float32', new Float32Array(0), [1, heads, 0, headDim]);

  // step runs ids with the cache state and returns the logits tensor.
  const step = async (state, ids) => {
    const feeds = {
      input_ids: i64(ids, [1, ids.length]),
      attention_mask: i64(new Array(state.len + ids.length).fill(1), [1, state.len + ids.length]),
    };
    for (const p of pasts) feeds[p] = state.kv[p] ?? emptyPast;
    const out = await session.run(feeds);
    for (const p of pasts) state.kv[p] = out[p.replace('past_key_values.', 'present.')];
    state.len += ids.length;
    return out.logits;
  };

  if (a.check) {
    const r = rng(a.seed + 1000);
    const ids = Array.from({ length: a.checkLen }, () => Math.floor(r() * vocab));
    const json = execFileSync(a.slope, ['forward', a.slopeModel, '--ids', JSON.stringify([ids])], { maxBuffer: 1 << 30 });
    const want = JSON.parse(json).logits[0];
    const half = Math.floor(a.checkLen / 2);
    const state = { len: 0, kv: {} };
    let dPrefill = 0, dDecode = 0, maxAbs = 0;
    const pre = await step(state, ids.slice(0, half));
    for (let t = 0; t < half; t++) {
      for (let j = 0; j < vocab; j++) {
        dPrefill = Math.max(dPrefill, Math.abs(pre.data[t * vocab + j] - want[t][j]));
        maxAbs = Math.max(maxAbs, Math.abs(want[t][j]));
      }
    }
    for (let t = half; t < a.checkLen; t++) {
      const l = await step(state, [ids[t]]);
      for (let j = 0; j < vocab; j++) {
        dDecode = Math.max(dDecode, Math.abs(l.data[j] - want[t][j]));
        maxAbs = Math.max(maxAbs, Math.abs(want[t][j]));
      }
    }
    const d = Math.max(dPrefill, dDecode);
    console.log(`check    ${a.checkLen} ids vs slope forward: max |Δ| ${d.toExponential(3)} (prefill of ${half} ${dPrefill.toExponential(3)}, ${a.checkLen - half} decode steps ${dDecode.toExponential(3)}; max |logit| ${maxAbs.toFixed(3)}) ${d <= a.tol ? 'ok' : 'FAIL'}`);
    if (!(d <= a.tol)) process.exit(1);
    return;
  }

  const run = async (seed) => {
    const r = rng(seed);
    const ids = Array.from({ length: a.prompt }, () => Math.floor(r() * vocab));
    const state = { len: 0, kv: {} };
    const p0 = performance.now();
    await step(state, ids);
    const p1 = performance.now();
    for (let t = 0; t < a.gen; t++) await step(state, [Math.floor(r() * vocab)]);
    const p2 = performance.now();
    return { prefill: p1 - p0, decode: p2 - p1 };
  };
  await run(a.seed); // warm-up
  let best = null;
  for (let k = 0; k < a.reps; k++) {
    const t = await run(a.seed);
    if (!best || t.prefill < best.prefill) best = { ...best, prefill: t.prefill };
    if (best.decode === undefined || t.decode < best.decode) best.decode = t.decode;
  }
  const ms = (x) => `${x.toFixed(1)}ms`;
  console.log(`model    ${a.model} (load ${Math.round(load)}ms, onnxruntime-node ${ort.env.versions?.node ?? '?'}, CPU EP, ${threads} intra-op threads)`);
  console.log(`prefill  1 x ${a.prompt} tokens in ${ms(best.prefill)}: ${(a.prompt / best.prefill * 1000).toFixed(1)} tok/s`);
  console.log(`decode   1 x ${a.gen} tokens in ${ms(best.decode)}: ${(a.gen / best.decode * 1000).toFixed(1)} tok/s`);
  console.log(`peak RSS ${(process.resourceUsage().maxRSS / 1024).toFixed(1)} MiB`);
}

main().catch((e) => {
  console.error(`ort_bench: ${e.stack || e}`);
  process.exit(1);
});
