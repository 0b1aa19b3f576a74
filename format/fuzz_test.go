package format

import (
	"testing"

	"github.com/slopeml/slope/format/slopepb"
)

// FuzzParse feeds arbitrary bytes to the reader: it may reject them, but
// it must never panic, hang or allocate beyond the file, and whatever it
// accepts must be usable through every accessor. CI runs the seeds (valid
// containers and broken ones); bench/fuzz.sh runs it for minutes.
func FuzzParse(f *testing.F) {
	good, _ := sampleBytes(f, nil)
	f.Add(good)
	zstd, _ := sampleBytes(f, &WriterOptions{Compress: true})
	f.Add(zstd)
	small, _ := sampleBytes(f, &WriterOptions{Alignment: 64})
	f.Add(small)
	for _, tc := range brokenCases() {
		f.Add(tc.make(f, small))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("fuzz.slope", data, nil)
		if err != nil {
			if !IsFormatError(err) {
				t.Fatalf("error outside the sentinel set: %v", err)
			}
			return
		}
		_ = file.Verify(nil)
		for _, x := range file.Tensors() {
			switch x.Encoding {
			case slopepb.Encoding_NM_TRANSPOSE_MASK:
				_, _ = file.TransposeMask(x.Name)
			default:
				if IsFloat(x.Dtype) {
					_, _ = file.Dense(x.Name)
				} else {
					_, _ = file.Raw(x.Name)
				}
			}
		}
		_ = file.Close()
	})
}
