// Package convert turns dense checkpoints into SLoPe .slope containers.
//
// The contract between reading and writing is the Source interface: a
// Source gives the architecture config and a lazy iterator of named weights
// in canonical orientation ([out, in] for linear layers, as PyTorch stores
// them) under canonical names (see OPTWeightNames), each decoded to float32
// on demand. Everything downstream — pruning, double pruning of the
// transposes, graph building, writing — works on canonical names only and
// never cares whether the weights came from safetensors, a PyTorch pickle or
// an ONNX file. Adding a checkpoint format means writing a Source.
//
// Sources: OpenSource picks one for a path. Hugging Face directories
// (OpenHF, OpenHFDir) sit on TensorStores, one per file: Safetensors
// (strict header validation, mmap), PytorchBin (zip + a restricted pickle
// machine that accepts only the globals a state dict needs and executes
// nothing), routed by model.safetensors.index.json or
// pytorch_model.bin.index.json when sharded. OpenONNX recognises OPT from
// an ONNX graph's data flow and reads initializers inline or from external
// data confined to the model's directory.
//
// DenseToSlope is the end-to-end converter: it holds one tensor in memory
// at a time, prunes the decoder-layer linear weights N:M by magnitude
// (MagnitudeMask), stores them as NM tensors with their double-pruned
// transpose masks, writes everything else dense, and records provenance and
// the model graph (BuildOPTGraph) in the manifest, plus the source's
// tokenizer files when it has them.
//
// With no input path the embedded tiny OPT model of package testmodels is
// converted, so the tool works offline.
package convert
