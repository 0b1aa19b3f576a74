// ort_run.mjs runs an ONNX model exported by `slope export --to onnx` in
// ONNX Runtime (onnxruntime-node, CPU) and prints its logits as JSON, for
// the export package's tests.
//
// Usage: node ort_run.mjs REQUEST.json
//   REQUEST: {"model": "m.onnx", "ids": [[...], ...], "prefill": K, "mask": [[...], ...]}
// A model without past inputs is run once on all ids. A with-past model
// (attention_mask and past_key_values.* inputs) is run on the first K ids
// of every row with empty pasts (K = 0 or absent: all of them), then one
// token at a time, feeding present.* back as past_key_values.*; its
// attention_mask is the request's mask (1 for every token when absent).
// Output: {"logits": [batch][seq][vocab], "inputs": [...], "outputs": [...]}.
// onnxruntime-node is loaded from $ORT_PATH (the package directory).
// Exit status 2 when it cannot be loaded.
import { createRequire } from 'node:module';
import fs from 'node:fs';

const require = createRequire(import.meta.url);

async function main() {
  const ortPath = process.env.ORT_PATH;
  let ort;
  try {
    ort = require(ortPath);
  } catch (e) {
    console.error(`ort_run: cannot load onnxruntime-node from ORT_PATH=${ortPath}: ${e.message}`);
    process.exit(2);
  }
  const req = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const session = await ort.InferenceSession.create(req.model, {
    executionProviders: ['cpu'], intraOpNumThreads: 1, interOpNumThreads: 1, logSeverityLevel: 3,
  });
  const ids = req.ids;
  const batch = ids.length, seq = ids[0].length;
  const i64 = (rows) => new ort.Tensor('int64', BigInt64Array.from(rows.flat(), BigInt), [rows.length, rows[0].length]);
  const pasts = session.inputNames.filter((n) => n.startsWith('past_key_values.'));
  const logits = Array.from({ length: batch }, () => []);
  const collect = (out, n) => {
    const v = out.dims[2];
    for (let b = 0; b < batch; b++) {
      for (let t = 0; t < n; t++) {
        logits[b].push(Array.from(out.data.subarray((b * n + t) * v, (b * n + t + 1) * v)));
      }
    }
  };
  if (pasts.length === 0) {
    const out = await session.run({ input_ids: i64(ids) });
    collect(out.logits, seq);
  } else {
    const meta = session.inputMetadata.find((m) => m.name === pasts[0]);
    const heads = meta.shape[1], headDim = meta.shape[3];
    const kv = {};
    for (const p of pasts) kv[p] = new ort.Tensor('float32', new Float32Array(0), [batch, heads, 0, headDim]);
    let pos = 0;
    const k = req.prefill > 0 ? req.prefill : seq;
    while (pos < seq) {
      const n = pos === 0 ? k : 1;
      const feeds = {
        input_ids: i64(ids.map((r) => r.slice(pos, pos + n))),
        attention_mask: i64(ids.map((_, b) => (req.mask ? req.mask[b].slice(0, pos + n) : new Array(pos + n).fill(1)))),
        ...kv,
      };
      const out = await session.run(feeds);
      for (const p of pasts) kv[p] = out[p.replace('past_key_values.', 'present.')];
      collect(out.logits, n);
      pos += n;
    }
  }
  process.stdout.write(JSON.stringify({ logits, inputs: session.inputNames, outputs: session.outputNames }));
}

main().catch((e) => {
  console.error(`ort_run: ${e.stack || e}`);
  process.exit(1);
});
