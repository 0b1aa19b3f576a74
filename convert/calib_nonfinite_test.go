package convert

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/slopeml/slope/testmodels"
)

// Calibration activations that are not finite (here an infinite embedding
// of the calibration token) are reported where they appear, for both
// calibrated methods, instead of as a NaN score or a Hessian that is not
// positive definite.
func TestCalibrationNonFiniteActivations(t *testing.T) {
	dir, cfg, _ := genDir(t, "pre-ln-tied", "F16", testmodels.Layout{Format: "safetensors", KeyPrefix: "model."})
	const tok = 5
	inf := make([]uint16, cfg.ProjDim())
	for i := range inf {
		inf[i] = 0x7c00 // +Inf in fp16
	}
	pokeHalves(t, dir, "model.decoder.embed_tokens.weight", tok*cfg.ProjDim(), inf...)
	ids := make([]byte, 2*200)
	for i := 0; i < 200; i++ {
		binary.LittleEndian.PutUint16(ids[2*i:], tok)
	}
	calib := filepath.Join(t.TempDir(), "calib.bin")
	if err := os.WriteFile(calib, ids, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, method := range []string{MethodWanda, MethodSparseGPT} {
		_, err := DenseToSlope(t.Context(), Options{In: dir, Out: filepath.Join(t.TempDir(), "m.slope"), Method: method,
			Calib: calib, CalibSamples: 2, CalibSeqLen: 8})
		if err == nil || !strings.Contains(err.Error(), "non-finite activations") || !strings.Contains(err.Error(), "node") {
			t.Errorf("%s: %v", method, err)
		}
	}
}
