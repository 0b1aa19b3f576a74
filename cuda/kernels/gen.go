package kernels

// The PTX files are generated from kernels.cu (needs nvcc, no GPU) and
// checked in, so that building needs no CUDA toolkit.
//go:generate sh gen.sh
