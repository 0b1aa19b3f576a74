package sparselt

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"
)

// TestGPUProbeLayout is a diagnostic, run only with SLOPE_PROBE_LAYOUT=1:
// it learns where cuSPARSELt's compressed form puts each kept value by
// compressing probe matrices whose kept values encode their own position
// (three probes, 12 bits of the position each, in disjoint exponent
// ranges so that a value slot always differs between probes while the
// pattern-only metadata does not). It reports, per layout, shape and
// mask kind, whether the value slots are W's kept values packed row by
// row (slot r·K/2 + 2g + s for group g of row r), and where a lone kept
// value of a group goes. Maps of small shapes are written to
// $SLOPE_PROBE_OUT.
func TestGPUProbeLayout(t *testing.T) {
	if os.Getenv("SLOPE_PROBE_LAYOUT") != "1" {
		t.Skip("diagnostic: set SLOPE_PROBE_LAYOUT=1")
	}
	d, h := openGPU(t)
	outDir := os.Getenv("SLOPE_PROBE_OUT")
	enc := func(k int, pos int64) uint16 {
		chunk := uint16(pos>>(12*k)) & 0xFFF
		return (64+40*uint16(k)+chunk>>7)<<7 | chunk&0x7F
	}
	dec := func(v [3]uint16) (int64, bool) {
		var pos int64
		for k := 0; k < 3; k++ {
			e := int(v[k]>>7) - 64 - 40*k
			if e < 0 || e >= 32 {
				return 0, false
			}
			pos |= int64(e<<7|int(v[k]&0x7F)) << (12 * k)
		}
		return pos, true
	}
	compress := func(bits []uint16, N, K int) ([]uint16, error) {
		var comp []uint16
		err := d.Do(func() error {
			dense, err := toDevice(d, bits)
			if err != nil {
				return err
			}
			defer d.Free(dense)
			w, err := h.NewWeight(0, dense, N, K)
			if err != nil {
				return err
			}
			defer w.Destroy()
			comp = make([]uint16, w.bytes/2)
			return d.CopyOut(unsafe.Pointer(&comp[0]), w.comp, int(w.bytes))
		})
		return comp, err
	}
	type shape struct{ N, K int }
	shapes := []shape{{32, 64}, {64, 128}, {256, 512}, {1024, 4096}, {4096, 1024}, {5120, 20480}}
	for _, layout := range []Layout{LayoutCol, LayoutRow} {
		h.Layout = layout
		for _, s := range shapes {
			for _, deficient := range []bool{false, true} {
				if s.N*s.K > 1<<24 && (deficient || layout == LayoutRow) {
					continue
				}
				name := fmt.Sprintf("%s %dx%d deficient=%v", layout, s.N, s.K, deficient)
				N, K := s.N, s.K
				r := rand.New(rand.NewPCG(uint64(N), uint64(K)))
				keep := make([]bool, N*K)
				for g := 0; g < N*K/4; g++ {
					want := 2
					if deficient {
						want = r.IntN(3)
					}
					perm := r.Perm(4)
					for _, p := range perm[:want] {
						keep[4*g+p] = true
					}
				}
				var probes [3][]uint16
				for k := 0; k < 3; k++ {
					bits := make([]uint16, N*K)
					for i, kp := range keep {
						if kp {
							bits[i] = enc(k, int64(i))
						}
					}
					c, err := compress(bits, N, K)
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					probes[k] = c
				}
				real := make([]uint16, N*K)
				for i, kp := range keep {
					if kp {
						real[i] = 0x3F80 | uint16(r.IntN(0x7F)) | uint16(r.IntN(2))<<15
					}
				}
				realC, err := compress(real, N, K)
				if err != nil {
					t.Fatalf("%s real: %v", name, err)
				}
				nslots := len(probes[0])
				slotPos := make([]int64, nslots) // -1: constant slot
				firstConst, lastValue, values, bad := -1, -1, 0, 0
				constSame := true
				for j := 0; j < nslots; j++ {
					v := [3]uint16{probes[0][j], probes[1][j], probes[2][j]}
					if v[0] == v[1] && v[1] == v[2] {
						slotPos[j] = -1
						if firstConst < 0 {
							firstConst = j
						}
						if realC[j] != v[0] {
							constSame = false
						}
						continue
					}
					p, ok := dec(v)
					if !ok || p >= int64(N*K) || !keep[p] {
						bad++
						slotPos[j] = -2
						continue
					}
					slotPos[j] = p
					values++
					lastValue = j
				}
				// Row-packed hypothesis: slot r·K/2 + 2g + s holds a kept
				// value of group g of row r.
				packed, order := 0, 0
				lone := map[string]int{}
				for j := 0; j < N*K/2 && j < nslots; j++ {
					p := slotPos[j]
					rr, g, sl := j/(K/2), (j%(K/2))/2, j%2
					if p < 0 {
						continue
					}
					pr, pc := int(p)/K, int(p)%K
					if pr == rr && pc/4 == g {
						packed++
						other := slotPos[j^1]
						if other >= 0 && sl == 0 && p < other {
							order++
						}
						if other < 0 {
							lone[fmt.Sprintf("pos%d->slot%d", pc%4, sl)]++
						}
					}
				}
				kept := 0
				for _, kp := range keep {
					if kp {
						kept++
					}
				}
				var sb strings.Builder
				fmt.Fprintf(&sb, "%s: %d bytes (%d slots; values %d of %d kept, undecodable %d), first constant slot %d, last value slot %d; row-packed %d; pairs in ascending order %d; lone %v; real compress equal in constant slots %v",
					name, 2*nslots, nslots, values, kept, bad, firstConst, lastValue, packed, order, lone, constSame)
				if packed != values {
					fmt.Fprintf(&sb, "\n  first value slots (slot: row,col):")
					shown := 0
					for j := 0; j < nslots && shown < 48; j++ {
						if p := slotPos[j]; p >= 0 {
							fmt.Fprintf(&sb, " %d:%d,%d", j, p/int64(K), p%int64(K))
							shown++
						}
					}
				}
				t.Log(sb.String())
				if outDir != "" && N*K == 64*128 {
					var m strings.Builder
					for j, p := range slotPos {
						if p >= 0 {
							fmt.Fprintf(&m, "%d %d %d\n", j, p/int64(K), p%int64(K))
						} else {
							fmt.Fprintf(&m, "%d %d %04x\n", j, p, probes[0][j])
						}
					}
					f := filepath.Join(outDir, fmt.Sprintf("probe-%s-%dx%d-%v.txt", strings.Trim(layout.String()[:3], "("), N, K, deficient))
					if err := os.WriteFile(f, []byte(m.String()), 0o644); err != nil {
						t.Error(err)
					}
				}
			}
		}
	}
	h.Layout = LayoutCol
}
