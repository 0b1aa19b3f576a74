// Package format reads and writes .slope containers, the files that hold
// SLoPe models. It owns the bytes: layout, encodings, checksums,
// compression and validation. It knows nothing about models or math
// beyond what validating an encoding needs. format/SPEC.md is the
// normative description; in short:
//
//	magic "SLOPE\0" | u16 version 1 | u16 endianness mark 0xFEFF | u16 flags
//	| u32 alignment | u64 manifest length | u64 manifest xxh3 | u64 data offset
//	manifest (protobuf slope.format.v1.Manifest) | zero padding
//	tensor data, each tensor aligned (4096 by default), in manifest order,
//	ending exactly at EOF
//
// The manifest carries the architecture and its typed config, an
// ONNX-style graph (onnx.NodeProto nodes of domain ai.slope), the tensor
// table (name, dtype, shape, encoding, offset, length, compression,
// xxh3-64), provenance and optional training state.
//
// Encodings: DENSE (fp32, fp16, bf16 and integer types); NM (kept values
// plus packed in-group indices, ceil(log2 M) bits each, rows padded to
// bytes; any 1 <= N < M <= 16); NM_TRANSPOSE_MASK (the double-pruned
// transpose as one bit per kept value); NM_TRANSPOSE_MATERIALIZED (W_dpᵀ
// stored as an NM tensor); LOW_RANK (adapter factors L [in, r], R [r, out]
// and their scale).
//
// Writing: Create streams tensors to a temporary file next to the target
// (one tensor in memory at a time), Close writes the manifest, fsyncs and
// renames, so a crash never leaves a partial file under the final name.
//
// Reading: Open maps the file and validates header, manifest, caps, sizes,
// references, layout and graph before returning; tensor content
// (checksums, N:M indices, masks) is checked on first access, and
// File.Verify checks everything. Errors wrap the sentinel errors of
// errors.go; no input makes the reader panic.
package format
