package main

import (
	"fmt"

	"github.com/slopeml/slope/cuda"
	"github.com/slopeml/slope/ops"
	"github.com/slopeml/slope/ops/cpu"
	slopert "github.com/slopeml/slope/runtime"
	"github.com/spf13/cobra"
)

const deviceHelp = "where to run: cpu, cuda (NVIDIA GPU, bf16 activations), cuda-f32 (GPU, float32 throughout)"

const formsHelp = "with --device cuda, the GPU forms of 2:4 weights (memory vs dense bf16): " +
	"decode (decode kernel for 1-4 rows + cuSPARSELt, 0.63x when they share values, else 1.13x), batch (tensor-core kernel for 1-16 rows + cuSPARSELt, 1.13x), " +
	"all (decode kernel for 1 row, tensor-core kernel for 2-16, cuSPARSELt, 1.19x or 1.69x), low-memory (cuSPARSELt only, 0.56x)"

// deviceFlags are --device and --sparse-forms.
type deviceFlags struct {
	device, forms string
	profile       bool // --gpu-profile (slope bench)
}

func addDeviceFlag(cmd *cobra.Command, f *deviceFlags) {
	cmd.Flags().StringVar(&f.device, "device", "cpu", deviceHelp)
	cmd.Flags().StringVar(&f.forms, "sparse-forms", string(cuda.FormsDecode), formsHelp)
}

// openModel opens a container on the device f names (cmd's flags; a bad
// --device or --sparse-forms is a usage error, whatever the device). The
// model's Close releases the device too.
func openModel(cmd *cobra.Command, path string, f deviceFlags) (*model, error) {
	device := f.device
	if device != "" && device != "cpu" && !isGPU(device) {
		return nil, usagef(cmd, "--device %q: want cpu, cuda or cuda-f32", device)
	}
	opts := cuda.Options{Search: true, Profile: f.profile}
	if err := opts.SetForms(cuda.Forms(f.forms)); err != nil {
		return nil, usagef(cmd, "--sparse-forms: %v", err)
	}
	var be ops.Backend
	var gpu *cuda.Backend
	var closeBE func() error
	if isGPU(device) {
		b, err := newGPU(device, opts)
		if err != nil {
			return nil, err
		}
		be, gpu, closeBE = b, b, b.Close
	}
	m, err := slopert.Open(path, &slopert.Options{Backend: be})
	if err != nil {
		if closeBE != nil {
			closeBE()
		}
		return nil, err
	}
	return &model{Model: m, gpu: gpu, closeBE: closeBE}, nil
}

// isGPU reports whether --device names a GPU device (cuda: bf16
// activations, cuda-f32: float32).
func isGPU(device string) bool { return device == "cuda" || device == "cuda-f32" }

// checkGPUProfile refuses --gpu-profile (on) off the GPU devices.
func checkGPUProfile(cmd *cobra.Command, device string, on bool) error {
	if on && !isGPU(device) {
		return usagef(cmd, "--gpu-profile needs --device cuda or cuda-f32")
	}
	return nil
}

// newGPU opens the GPU for --device cuda (bf16 activations) or cuda-f32
// (float32), with opts' other fields.
func newGPU(device string, opts cuda.Options) (*cuda.Backend, error) {
	opts.Activations = cuda.BF16
	if device == "cuda-f32" {
		opts.Activations = cuda.F32
	}
	b, err := cuda.New(opts)
	if err != nil {
		return nil, fmt.Errorf("--device %s: %w", device, err)
	}
	return b, nil
}

// model is a runtime model with its backend.
type model struct {
	*slopert.Model
	gpu     *cuda.Backend // nil on the CPU
	closeBE func() error
}

// deviceLine describes where the model runs, for bench output.
func (m *model) deviceLine() string {
	if m.gpu == nil {
		return "cpu      " + cpu.Kernels() + " kernels"
	}
	return fmt.Sprintf("device   %s (%s activations), weights %.1f MiB on the GPU", m.gpu.Device().Info, m.gpu.Name(), float64(m.gpu.WeightBytes)/(1<<20))
}

func (m *model) Close() error {
	err := m.Model.Close()
	if m.closeBE != nil {
		if e := m.closeBE(); err == nil {
			err = e
		}
	}
	return err
}
