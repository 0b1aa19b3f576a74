package cpu

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/slopeml/slope/format"
)

// Blocking parameters of the sparse kernels.
const (
	spLanes  = 8       // outputs per sparse panel (one YMM lane each)
	spPanels = 4       // panels expanded together by the AVX-512 sparse GEMM
	spMaxIn  = 1 << 24 // In limit of the GEMM kernels' uint32 byte offsets
)

// The AVX2 sparse GEMM expands up to spPanelsAVX2 panels together, as
// many as keep their expanded steps (64 bytes per kept value and panel)
// within spPrepBytes per worker, and at least spPanels.
const (
	spPanelsAVX2 = 16
	spPrepBytes  = 2 << 20
)

// Sparse is an N:M weight prepared for Linear: panels of 8 outputs, values
// [ceil(Out/8)][In/M][N][8] in the stored dtype and one uint32 per
// (panel, group, slot) with the 8 lanes' in-group indices as nibbles
// (lane l at bits 4l..4l+3). 2:4 has its own denser form: one uint32 per
// (panel, group) whose nibble l holds lane l's two 2-bit indices (slot 0
// in bits 0-1, slot 1 in bits 2-3), and bf16 values stored as lane pairs,
// [ceil(Out/8)][In/4][8][2]. It is immutable and safe for concurrent use,
// except that SetValuesF32 and SetValuesPanelGatherF32 (training) refill
// the values of a Sparse their caller owns.
type Sparse struct {
	spLayout
	out  int
	in   int
	kept int // In/M*N
	np   int // panels
	vals wbuf
	idx  []uint32
}

// PrepareNM validates an N:M weight (sizes and every index, as
// format.UnpackNMIndices does) and copies it into the panel layout.
// Memory: ceil(Out/8)*8*kept values of the stored dtype plus 4 bits per
// kept value for the indices, against kept values plus ceil(log2 M) bits
// per kept value raw.
func PrepareNM(w NMWeight) (*Sparse, error) {
	const op = "prepare nm"
	esz, err := w.check(op)
	if err != nil {
		return nil, err
	}
	s, err := prepareNMIndices(op, w.Pattern, w.DType, w.Out, w.In, w.Indices)
	if err != nil {
		return nil, err
	}
	kept, nv := s.kept, s.np*spLanes*s.kept
	if esz == 4 {
		f := make([]float32, nv)
		for o := 0; o < w.Out; o++ {
			dst := f[(o/spLanes)*kept*spLanes+o%spLanes:]
			src := w.Values[o*kept*4 : (o+1)*kept*4]
			for t := 0; t < kept; t++ {
				dst[t*spLanes] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*t:]))
			}
		}
		s.vals.f32 = f
	} else {
		u := make([]uint16, nv)
		pairs := s.quad && s.dt == BFloat16
		for o := 0; o < w.Out; o++ {
			dst := u[(o/spLanes)*kept*spLanes:]
			l := o % spLanes
			src := w.Values[o*kept*2 : (o+1)*kept*2]
			for t := 0; t < kept; t++ {
				pos := t*spLanes + l
				if pairs {
					pos = (t/2*spLanes+l)*2 + t%2
				}
				dst[pos] = binary.LittleEndian.Uint16(src[2*t:])
			}
		}
		s.vals.u16 = u
	}
	return s, nil
}

// PrepareNMIndices prepares the indices of a float32 N:M weight [out, in]
// (packed as the container stores them) without values: a trainer keeps
// this per weight and runs its products on views whose values it refills
// at every call (WithValuesF32; Linear on the result itself is an error).
func PrepareNMIndices(p format.NM, out, in int, indices []byte) (*Sparse, error) {
	const op = "prepare nm indices"
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("cpu: %s: %w", op, err)
	}
	return prepareNMIndices(op, p, Float32, out, in, indices)
}

// prepareNMIndices validates and unpacks the indices into the panel
// layout's index words: a Sparse without values.
func prepareNMIndices(op string, p format.NM, dt DType, out, in int, indices []byte) (*Sparse, error) {
	groups := in / p.M
	kept := groups * p.N
	raw := make([]uint8, out*kept)
	if err := format.UnpackNMIndices(p, out, in, indices, raw); err != nil {
		return nil, fmt.Errorf("cpu: %s: %w", op, err)
	}
	np := (out + spLanes - 1) / spLanes
	if _, ok := mulOK(np*spLanes, kept); !ok {
		return nil, errShape(op, "nm weight [%d, %d]: padded size overflows", out, in)
	}
	s := &Sparse{
		spLayout: spLayout{dt: dt, p: p, quad: p == format.NM{N: 2, M: 4}, groups: groups},
		out:      out, in: in, kept: kept, np: np,
	}
	wpp := s.wordsPerPanel()
	s.idx = make([]uint32, np*wpp)
	for o := 0; o < out; o++ {
		q, l := o/spLanes, o%spLanes
		words := s.idx[q*wpp : (q+1)*wpp]
		for t, v := range raw[o*kept : (o+1)*kept] {
			if s.quad {
				words[t/2] |= uint32(v) << (4*l + 2*(t%2))
			} else {
				words[t] |= uint32(v) << (4 * l)
			}
		}
	}
	return s, nil
}

// Out returns the output dimension.
func (s *Sparse) Out() int { return s.out }

// In returns the input dimension.
func (s *Sparse) In() int { return s.in }

// DType returns the weight storage dtype.
func (s *Sparse) DType() DType { return s.dt }

// Pattern returns the N:M pattern.
func (s *Sparse) Pattern() format.NM { return s.p }

// Bytes returns the memory held by the prepared weight.
func (s *Sparse) Bytes() int { return s.vals.bytes() + 4*len(s.idx) }

// Linear computes y = x·Wᵀ (+ bias if non-nil). x is [m, In] row-major,
// y is [m, Out]; threads <= 0 means runtime.GOMAXPROCS(0).
func (s *Sparse) Linear(y, x []float32, m int, bias []float32, threads int) error {
	return s.linear("nm linear", y, x, m, bias, threads, false)
}

// LinearAdd adds x·Wᵀ to y (the backward pass's input gradient, which
// several products accumulate into). Shapes as Linear.
func (s *Sparse) LinearAdd(y, x []float32, m int, threads int) error {
	return s.linear("nm linear add", y, x, m, nil, threads, true)
}

func (s *Sparse) linear(op string, y, x []float32, m int, bias []float32, threads int, add bool) error {
	if s == nil {
		return errNil
	}
	if err := checkIO(op, y, x, m, s.in, s.out, bias); err != nil {
		return err
	}
	if s.vals.len() == 0 {
		return fmt.Errorf("cpu: %s: the weight has indices only (PrepareNMIndices: run a WithValuesF32 view)", op)
	}
	if m == 0 {
		return nil
	}
	t := ResolveThreads(threads)
	if m >= gemmMinRows && asmDT(s.dt) && s.in <= spMaxIn {
		s.gemm(y, x, m, bias, t, add)
		return nil
	}
	s.gemv(y, x, m, bias, t, add)
	return nil
}

// gemv runs one sparse GEMV per row and panel, split over panels; panels
// are taken 32 at a time with the rows inside so that many rows reuse a
// panel from cache.
func (s *Sparse) gemv(y, x []float32, m int, bias []float32, t int, add bool) {
	xs := x
	stride := s.in
	if !s.quad && s.p.M <= 8 && asmDT(s.dt) {
		// The AVX2 kernel reads up to 8 floats past a row's last group.
		stride = s.in + 8
		buf := GetF32(m * stride)
		defer PutF32(buf)
		xs = *buf
		for i := 0; i < m; i++ {
			copy(xs[i*stride:], x[i*s.in:(i+1)*s.in])
			clear(xs[i*stride+s.in : (i+1)*stride])
		}
	}
	wpp := s.wordsPerPanel()
	parallelRange(s.np, t, func(p0, p1 int) {
		for c0 := p0; c0 < p1; c0 += 32 {
			c1 := min(c0+32, p1)
			full := c1
			if c1*spLanes > s.out {
				full = c1 - 1
			}
			for i := 0; i < m; i++ {
				yi := y[i*s.out : (i+1)*s.out]
				xi := xs[i*stride : (i+1)*stride]
				if !add {
					initRow(yi, c0*spLanes, min(c1*spLanes, s.out), bias)
				}
				if full > c0 {
					spmvPanels(&s.spLayout, xi, &s.vals, c0*s.kept*spLanes, s.idx, c0*wpp, full-c0,
						yi[c0*spLanes:full*spLanes])
				}
				if full < c1 {
					var tmp [spLanes]float32
					spmvPanels(&s.spLayout, xi, &s.vals, full*s.kept*spLanes, s.idx, full*wpp, 1, tmp[:])
					for l := range s.out - full*spLanes {
						yi[full*spLanes+l] += tmp[l]
					}
				}
			}
		}
	})
}

// gemm is the assembly sparse GEMM: X is transposed into blocks of 32
// rows (AVX2) or 64 rows (AVX-512), [In][32 or 64] each, the rows' tail
// lanes zeroed up to the kernel granularity; then the indices and values
// of a group of panels (up to 16 with AVX2, 4 with AVX-512) are expanded
// once (spPrep) and every block runs the micro-kernels over the group's
// lanes (3+3+2 or 4+4 outputs per panel), K chunk by K chunk.
func (s *Sparse) gemm(y, x []float32, m int, bias []float32, t int, add bool) {
	in := s.in
	// chunk: the bytes of a block's X rows that one K chunk spans.
	// panels: how many panels are expanded together; each block's K
	// chunk serves all of them while it is in L1. On Zen 3 (AVX2), 16
	// panels ran 1.01-1.25x as fast as 4, most at In = 4096 (2026-11-28,
	// one thread, m = 512, 4096x1024, 1024x4096, 1024x1024 and 1024x256:
	// medians of 21-25 alternated calls, three runs); 32 and 64 were no
	// faster. The AVX-512 kernel was tuned with 4.
	ld, sh, gran, rmax, chunk := 32, 7, 8, 3, 16<<10
	panels := min(spPanelsAVX2, max(spPanels, spPrepBytes/(64*max(1, s.kept))))
	if asm512On() {
		ld, sh, gran, rmax, chunk, panels = 64, 8, 16, 4, 64<<10, spPanels
	}
	nb := (m + ld - 1) / ld
	xtb := GetF32(nb * in * ld)
	defer PutF32(xtb)
	xt := *xtb
	parallelRange(nb, t, func(b0, b1 int) {
		for b := b0; b < b1; b++ {
			transposeBlock(xt[b*in*ld:(b+1)*in*ld], x, b*ld, min(ld, m-b*ld), in, ld, gran)
		}
	})
	wpp := s.wordsPerPanel()
	// K chunks: the steps whose X rows span chunk bytes of a block, so
	// that a chunk stays in cache while the panels use it. The AVX2
	// kernel loads one X row per FMA, so its chunk must stay in L1 (32 KiB
	// on the CPUs it serves): from L2 it ran at half the speed (Zen 3,
	// 2026-11-27). The AVX-512 kernel showed no difference between 8 and
	// 128 KiB (Zen 4).
	kc := max(1, chunk/(ld*4)/s.p.M) * s.p.N
	work := func(p0, p1, b0, b1 int) {
		np := min(panels, p1-p0)
		offb := getU32(np * s.kept * spLanes)
		valb := GetF32(np * s.kept * spLanes)
		ytb := GetF32(np * spLanes * ld)
		defer putU32(offb)
		defer PutF32(valb)
		defer PutF32(ytb)
		bv := new([spLanes]float32) // a panel's bias (escapes through the assembly)
		for pc := p0; pc < p1; pc += panels {
			pn := min(panels, p1-pc)
			for k := 0; k < pn; k++ {
				p := pc + k
				spPrep(&s.spLayout, (*offb)[k*s.kept*spLanes:], (*valb)[k*s.kept*spLanes:],
					s.idx[p*wpp:(p+1)*wpp], &s.vals, p*s.kept*spLanes, sh)
			}
			// full: the group's panels with all 8 lanes (all but a ragged
			// last panel of the weight), run by one spmmPanels call per
			// block and K chunk (AVX2).
			full := pn
			if (pc+pn)*spLanes > s.out {
				full--
			}
			if ld != 32 || !spmmPanelsOn {
				full = 0
			}
			for b := b0; b < b1; b++ {
				rows := min(ld, m-b*ld)
				mb := (rows + gran - 1) / gran * gran
				blk := xt[b*in*ld : (b+1)*in*ld]
				yt := (*ytb)[:pn*spLanes*mb]
				clear(yt)
				for k0 := 0; k0 < s.kept; k0 += kc {
					steps := min(kc, s.kept-k0)
					if full > 0 {
						spmmPanels(mb, blk, in, (*offb)[k0*spLanes:], (*valb)[k0*spLanes:], s.kept*spLanes, full, steps, yt)
					}
					for k := full; k < pn; k++ {
						off := (*offb)[(k*s.kept+k0)*spLanes : (k+1)*s.kept*spLanes]
						vals := (*valb)[(k*s.kept+k0)*spLanes : (k+1)*s.kept*spLanes]
						lanes := min(spLanes, s.out-(pc+k)*spLanes)
						for l0 := 0; l0 < lanes; l0 += rmax {
							r := min(rmax, lanes-l0)
							spmmTile(ld, mb, r, l0, blk, in, off, vals, steps, yt[(k*spLanes+l0)*mb:(k*spLanes+l0+r)*mb])
						}
					}
				}
				for k := 0; k < pn; k++ {
					p := pc + k
					lanes := min(spLanes, s.out-p*spLanes)
					var bp *[spLanes]float32
					if bias != nil {
						copy(bv[:], bias[p*spLanes:p*spLanes+lanes])
						bp = bv
					}
					storeLanes(y[b*ld*s.out+p*spLanes:], s.out, yt[k*spLanes*mb:(k+1)*spLanes*mb], mb, rows, lanes, bp, add)
				}
			}
		}
	}
	if s.np >= t || nb == 1 {
		parallelRange(s.np, t, func(p0, p1 int) { work(p0, p1, 0, nb) })
		return
	}
	parallelRange(nb, t, func(b0, b1 int) { work(0, s.np, b0, b1) })
}
