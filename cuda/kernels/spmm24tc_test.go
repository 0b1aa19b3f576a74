package kernels

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slopeml/slope/format"
)

// ---------------------------------------------------------------- mma.sp
//
// emuMmaSp16832 is mma.sp.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32
// with sparsity selector sel, written from the PTX ISA (9.7.14.6 "Matrix
// multiply-accumulate operation using mma.sp instruction with sparse
// matrix A") independently of the kernel's index arithmetic:
//
//   - A (9.7.14.6.2.2): lane l (groupID g = l>>2, threadID_in_group t =
//     l&3) holds a0..a7 in 4 registers; a0,a1,a4,a5 are in row g, the
//     others in row g+8; a0..a3 are the two non-zeros of the 4-wide chunk
//     starting at column 4t, a4..a7 of the chunk at 4t+16. A register's
//     low half is the non-zero with the lower index.
//   - metadata (9.7.14.6.1 "Sparse matrix storage", Figure 122): for
//     m16n8k32 .bf16 the thread pair T(2sel), T(2sel+1) of each quad g
//     contributes; T(2sel+j) covers columns 16j..16j+15, bits [15:0] for
//     row g and [31:16] for row g+8, chunk 4j+c in bits [4c+3:4c], whose
//     low 2 bits index the first non-zero and high 2 bits the second;
//     only first < second is meaningful (mma.sp::ordered_metadata).
//   - B (Figure 121): register r of lane l holds B[2t+8r][g] (low half)
//     and B[2t+8r+1][g] (high half).
//   - C/D (as mma.m16n8k16 floating point): d0,d1 = D[g][2t], D[g][2t+1];
//     d2,d3 = D[g+8][2t], D[g+8][2t+1].
//
// It reports an error for a meaningless metadata nibble. The products are
// summed in float64 and added to C in float32.
func emuMmaSp16832(d *[32][4]float32, a *[32][4]uint32, b *[32][4]uint32, e *[32]uint32, sel int) error {
	var A [16][32]float64
	for l := 0; l < 32; l++ {
		g, t := l>>2, l&3
		for reg := 0; reg < 4; reg++ {
			row := g + 8*(reg&1)
			chunk := t + 4*(reg>>1)
			meta := e[4*(row&7)+2*sel+(chunk>>2)]
			nib := (meta >> (16*(row>>3) + 4*(chunk&3))) & 0xF
			i0, i1 := int(nib&3), int(nib>>2)
			if i0 >= i1 {
				return fmt.Errorf("mma.sp: row %d chunk %d: metadata nibble %04b is not meaningful", row, chunk, nib)
			}
			w := a[l][reg]
			A[row][4*chunk+i0] = float64(bfLo(w))
			A[row][4*chunk+i1] = float64(bfHi(w))
		}
	}
	var B [32][8]float64
	for l := 0; l < 32; l++ {
		g, t := l>>2, l&3
		for r := 0; r < 4; r++ {
			B[2*t+8*r][g] = float64(bfLo(b[l][r]))
			B[2*t+8*r+1][g] = float64(bfHi(b[l][r]))
		}
	}
	for l := 0; l < 32; l++ {
		g, t := l>>2, l&3
		for i := 0; i < 4; i++ {
			row, col := g+8*(i>>1), 2*t+(i&1)
			var s float64
			for k := 0; k < 32; k++ {
				s += A[row][k] * B[k][col]
			}
			d[l][i] += float32(s)
		}
	}
	return nil
}

// TestEmuMmaSpDense checks the ISA model against a direct dense product
// for fragments built element by element from the ISA formulas.
func TestEmuMmaSpDense(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	var A [16][32]float32
	var meta [16][8]uint32 // nibble per (row, chunk)
	for r := 0; r < 16; r++ {
		for c := 0; c < 8; c++ {
			p := rng.Perm(4)[:2]
			if p[0] > p[1] {
				p[0], p[1] = p[1], p[0]
			}
			for _, i := range p {
				A[r][4*c+i] = bfRound(float32(rng.NormFloat64()))
			}
			meta[r][c] = uint32(p[0] | p[1]<<2)
		}
	}
	var Bm [32][8]float32
	for k := range Bm {
		for n := range Bm[k] {
			Bm[k][n] = bfRound(float32(rng.NormFloat64()))
		}
	}
	var a, b [32][4]uint32
	var e [32]uint32
	var d [32][4]float32
	for l := 0; l < 32; l++ {
		g, t := l>>2, l&3
		for reg := 0; reg < 4; reg++ {
			row, chunk := g+8*(reg&1), t+4*(reg>>1)
			nib := meta[row][chunk]
			a[l][reg] = bfPair(A[row][4*chunk+int(nib&3)], A[row][4*chunk+int(nib>>2)])
		}
		for r := 0; r < 4; r++ {
			b[l][r] = bfPair(Bm[2*t+8*r][g], Bm[2*t+8*r+1][g])
		}
		j := (l & 3) & 1 // selector 0: lanes 0,1 of the quad (2,3 copy them)
		for c := 0; c < 4; c++ {
			e[l] |= meta[g][4*j+c]<<(4*c) | meta[g+8][4*j+c]<<(16+4*c)
		}
	}
	if err := emuMmaSp16832(&d, &a, &b, &e, 0); err != nil {
		t.Fatal(err)
	}
	for l := 0; l < 32; l++ {
		g, tt := l>>2, l&3
		for i := 0; i < 4; i++ {
			row, col := g+8*(i>>1), 2*tt+(i&1)
			var s float64
			for k := 0; k < 32; k++ {
				s += float64(A[row][k]) * float64(Bm[k][col])
			}
			if math.Abs(float64(d[l][i])-s) > 1e-4*(1+math.Abs(s)) {
				t.Fatalf("lane %d d%d = %v, want %v", l, i, d[l][i], s)
			}
		}
	}
}

func bfRound(v float32) float32 { return format.BFloat16ToFloat32(format.Float32ToBFloat16(v)) }

func bfPair(lo, hi float32) uint32 {
	return uint32(format.Float32ToBFloat16(lo)) | uint32(format.Float32ToBFloat16(hi))<<16
}

// ---------------------------------------------------------------- kernel mirror

const (
	emuTcWarps   = 8   // TC_WARPS
	emuTcRB      = 128 // TC_RB
	emuTcKSMax   = 8   // TC_KSMAX
	emuTcStep    = 128 // TC_STEP
	emuTcXB      = 2   // TC_XB
	emuTcXSWords = emuTcKSMax * 4 * 2 * 32 * 4
)

// Mutations of the mirror (mutNone is the kernel); each models a plausible
// fragment-mapping bug and must make the emulation fail.
const (
	mutNone       = iota
	mutMetaRows   // metadata halves for rows g and g+8 swapped
	mutMetaPair   // metadata K half taken from lane bit 1 instead of bit 0
	mutMetaNibble // nibbles gathered with stride 1 instead of 4
	mutARegs      // A registers 1 and 2 swapped
	mutBPerm      // staging ignores rho (natural K order for B)
	mutCount
)

// emuSpmm24tc mirrors spmm24tc_body<T> over the launch SpMM24TC makes
// with target: blocks (both grid dimensions, in an order given by perm,
// since any block may be the last of its row block), warps and lanes are
// loops, registers are per-lane arrays, xs is the shared tile, ws and cnt
// the workspace. x holds the activations as floats (ld_x8 rounds them to
// bf16). It returns how often each value element and index byte was read
// (an index word read by several lanes of one load counts once).
func emuSpmm24tc(y []float32, ldy int, x []float32, ldx int, vals []uint16, idx []byte, bias []float32, M, rows, cols, target, mut int, perm func(int) []int) (valReads, idxReads []int, err error) {
	G, maxC, spb := SpMM24TCPlan(rows, cols, target)
	steps := (cols + emuTcStep - 1) / emuTcStep
	gridX := (rows + emuTcRB - 1) / emuTcRB // row blocks
	tv, ti, err := SpMM24TCLayout(u16Bytes(vals), idx, rows, cols)
	if err != nil {
		return nil, nil, err
	}
	valReads = make([]int, len(tv)/2)
	idxReads = make([]int, len(ti))
	ldcs := func(u4 int) (v [4]uint32) { // uint4 u4 of tv
		for i := 0; i < 8; i++ {
			valReads[8*u4+i]++
		}
		for i := range v {
			v[i] = binary.LittleEndian.Uint32(tv[16*u4+4*i:])
		}
		return
	}
	ldIdx := func(u2 int, seen map[int]bool) (w [2]uint32) { // uint2 u2 of ti
		b := 8 * u2
		if !seen[b] {
			seen[b] = true
			for i := 0; i < 8; i++ {
				idxReads[b+i]++
			}
		}
		return [2]uint32{binary.LittleEndian.Uint32(ti[b:]), binary.LittleEndian.Uint32(ti[b+4:])}
	}
	ldX8 := func(off int) (u [4]uint32) {
		if (off*4)%16 != 0 && (off*2)%16 != 0 {
			panic("x load not aligned")
		}
		for i := 0; i < 4; i++ {
			u[i] = bfPair(x[off+2*i], x[off+2*i+1])
		}
		return
	}
	meta16 := func(w [2]uint32, sh int) uint32 {
		if mut == mutMetaNibble {
			return (w[0] >> sh) & 0xFFFF
		}
		return (w[0]>>sh)&0xF | ((w[0]>>(sh+16))&0xF)<<4 | ((w[1]>>sh)&0xF)<<8 | ((w[1]>>(sh+16))&0xF)<<12
	}
	type stepBuf struct {
		va [32][2][2][4]uint32 // [lane][h][rh]
		ia [32][2][2][2]uint32
	}
	type warpState struct {
		rg     int
		active bool
		buf    [3]stepBuf
		acc    [32][2][4]float32
	}
	NB := 1
	if M > 8 {
		NB = 2
	}
	ws := make([]float32, gridX*maxC*16*emuTcRB)
	for i := range ws {
		ws[i] = float32(math.NaN())
	}
	cnt := make([]int, gridX)
	xs := make([]uint32, emuTcXSWords)
	upr := emuTcKSMax * 16
	nstep := emuTcWarps * 32 / upr
	// segment runs block b's part of row block bx: steps [st0, st0+nst),
	// as contributor slot of c (c == 1: the whole row block).
	segment := func(b, bx, st0, nst, slot, c int) error {
		kend := min(cols, (st0+nst)*emuTcStep)
		wss := make([]*warpState, emuTcWarps)
		for w := range wss {
			s := &warpState{rg: bx*emuTcWarps + w}
			s.active = s.rg < rows>>4
			wss[w] = s
		}
		r0 := func(s *warpState, lane int) int {
			rg := 0
			if s.active {
				rg = s.rg
			}
			return rg*16 + lane>>2
		}
		halves := func(s *warpState, st int) int {
			if !s.active || st >= nst {
				return 0
			}
			w := cols - (st0+st)*emuTcStep
			switch {
			case w >= 128:
				return 2
			case w >= 64:
				return 1
			}
			return 0
		}
		// tc_load of absolute step st for every lane of warp s (one
		// warp-wide instruction per load).
		load := func(s *warpState, st, nh int) (sb stepBuf) {
			rg := 0
			if s.active {
				rg = s.rg
			}
			for h := 0; h < nh; h++ {
				for rh := 0; rh < 2; rh++ {
					seen := map[int]bool{}
					for lane := 0; lane < 32; lane++ {
						sb.va[lane][h][rh] = ldcs(rg*steps*128 + (st*4+2*h+rh)*32 + lane)
						sb.ia[lane][h][rh] = ldIdx(rg*steps*32+(st*4+2*h+rh)*8+lane>>2, seen)
					}
				}
			}
			return
		}
		stage := func(st int) {
			for tid := 0; tid < emuTcWarps*32; tid++ {
				cu, n0 := tid%upr, tid/upr
				var dst [4]int
				for p := 0; p < 4; p++ {
					j := cu & 15
					w := 2*j + p>>1
					h, tt, c, a := w>>4, (w>>2)&3, (w>>1)&1, w&1
					s, q := 2*h+c, tt+4*a
					k := 4*q + 2*(p&1)
					if mut == mutBPerm {
						s, k = j>>2, 8*(j&3)+2*p // natural order: columns 32s + k
					}
					r, tb := k>>3, (k&7)>>1
					dst[p] = ((((cu>>4)*4+s)*2)*32+tb)*4 + r
				}
				col := (st0+st)*emuTcStep + 8*cu
				if col >= kend {
					continue
				}
				for nn := n0; nn < M; nn += emuTcXB * nstep {
					var u [emuTcXB][4]uint32
					for i := 0; i < emuTcXB; i++ {
						if n := nn + i*nstep; n < M {
							u[i] = ldX8(n*ldx + col)
						}
					}
					for i := 0; i < emuTcXB; i++ {
						if n := nn + i*nstep; n < M {
							tok := (n>>3)*32*4 + (n&7)*4*4
							for p := 0; p < 4; p++ {
								xs[dst[p]+tok] = u[i][p]
							}
						}
					}
				}
			}
		}
		mmaStep := func(ws *warpState, sb *stepBuf, sl, nh int) error {
			for s := 0; s < 4; s++ {
				h, c := s>>1, s&1
				if h >= nh {
					continue
				}
				var a, bf [32][4]uint32
				var e [32]uint32
				for lane := 0; lane < 32; lane++ {
					va := sb.va[lane][h]
					a[lane] = [4]uint32{va[0][2*c], va[1][2*c], va[0][2*c+1], va[1][2*c+1]}
					if mut == mutARegs {
						a[lane][1], a[lane][2] = a[lane][2], a[lane][1]
					}
					sel := lane & 1
					if mut == mutMetaPair {
						sel = (lane >> 1) & 1
					}
					sh := 4 * (2*c + sel)
					lo, hi := meta16(sb.ia[lane][h][0], sh), meta16(sb.ia[lane][h][1], sh)
					if mut == mutMetaRows {
						lo, hi = hi, lo
					}
					e[lane] = lo | hi<<16
				}
				for nb := 0; nb < NB; nb++ {
					for lane := 0; lane < 32; lane++ {
						base := (((sl*4+s)*2+nb)*32 + lane) * 4
						copy(bf[lane][:], xs[base:base+4])
					}
					var d [32][4]float32
					for lane := 0; lane < 32; lane++ {
						d[lane] = ws.acc[lane][nb]
					}
					if err := emuMmaSp16832(&d, &a, &bf, &e, 0); err != nil {
						return err
					}
					for lane := 0; lane < 32; lane++ {
						ws.acc[lane][nb] = d[lane]
					}
				}
			}
			return nil
		}
		for _, s := range wss {
			s.buf[0] = load(s, st0, halves(s, 0))
			s.buf[1] = load(s, st0+1, halves(s, 1))
		}
		// The kernel's unrolled rotation: step st computes buffer st % 3
		// and loads step st + 2 into buffer (st + 2) % 3.
		for st := 0; st < nst; st++ {
			if st%emuTcKSMax == 0 {
				stage(st)
			}
			for _, s := range wss {
				nxt := load(s, st0+st+2, halves(s, st+2))
				if err := mmaStep(s, &s.buf[st%3], st%emuTcKSMax, halves(s, st)); err != nil {
					return err
				}
				s.buf[(st+2)%3] = nxt
			}
		}
		// Epilogue: fragment (nb, i) of lane (g, t) is token 8nb+2t+(i&1), row r0+8(i>>1).
		frag := func(s *warpState, lane, nb, i int) (tok, r int) {
			return 8*nb + 2*(lane&3) + i&1, r0(s, lane) + 8*(i>>1)
		}
		if c > 1 {
			if c > maxC || slot < 0 || slot >= c || (nst == steps) {
				return fmt.Errorf("block %d: slot %d of %d contributors (maxC %d), %d of %d steps", b, slot, c, maxC, nst, steps)
			}
			at := func(k, tok, r int) int { return ((bx*maxC+k)*16+tok)*emuTcRB + r - bx*emuTcRB }
			for _, s := range wss {
				if !s.active {
					continue
				}
				for lane := 0; lane < 32; lane++ {
					for nb := 0; nb < 2; nb++ {
						for i := 0; i < 4; i++ {
							if tok, r := frag(s, lane, nb, i); tok < M {
								ws[at(slot, tok, r)] = s.acc[lane][nb][i]
							}
						}
					}
				}
			}
			cnt[bx]++
			if cnt[bx] != c {
				return nil
			}
			for _, s := range wss {
				if !s.active {
					continue
				}
				for lane := 0; lane < 32; lane++ {
					for nb := 0; nb < 2; nb++ {
						for i := 0; i < 4; i++ {
							var sum float32
							if tok, r := frag(s, lane, nb, i); tok < M {
								for k := 0; k < c; k++ {
									sum += ws[at(k, tok, r)]
								}
							}
							s.acc[lane][nb][i] = sum
						}
					}
				}
			}
			cnt[bx] = 0
		}
		for _, s := range wss {
			if !s.active {
				continue
			}
			for lane := 0; lane < 32; lane++ {
				for nb := 0; nb < 2; nb++ {
					for i := 0; i < 4; i++ {
						tok, r := frag(s, lane, nb, i)
						var bv float32
						if bias != nil {
							bv = bias[r]
						}
						if tok < M {
							y[tok*ldy+r] = s.acc[lane][nb][i] + bv
						}
					}
				}
			}
		}
		return nil
	}
	U := gridX * steps
	for _, b := range perm(G) {
		for i := range xs { // once per block, as the kernel does
			xs[i] = 0
		}
		if spb > 0 { // K split
			bx, sl := b%gridX, b/gridX
			st0 := sl * spb
			if st0 >= steps {
				return nil, nil, fmt.Errorf("block %d of %d has no work", b, G)
			}
			if err := segment(b, bx, st0, min(spb, steps-st0), sl, (steps+spb-1)/spb); err != nil {
				return nil, nil, err
			}
			continue
		}
		lo, hi := b*U/G, (b+1)*U/G
		if lo >= hi {
			return nil, nil, fmt.Errorf("block %d of %d has no work", b, G)
		}
		for u := lo; u < hi; {
			bx := u / steps
			st0 := u - bx*steps
			nst := min(steps-st0, hi-u)
			u += nst
			first := tcBlockOf(int64(bx*steps), int64(U), G)
			c := tcBlockOf(int64(bx*steps+steps-1), int64(U), G) - first + 1
			if err := segment(b, bx, st0, nst, b-first, c); err != nil {
				return nil, nil, err
			}
		}
	}
	for bx, c := range cnt {
		if c != 0 {
			return nil, nil, fmt.Errorf("counter of row block %d left at %d", bx, c)
		}
	}
	return valReads, idxReads, nil
}

func TestSpMM24TCPlan(t *testing.T) {
	for _, c := range []struct{ rows, cols, grid, blocks, maxC, spb int }{
		{4096, 4096, 0, 256, 8, 4},        // 6.7B attn: 1024 units < 16 per block: K split, 8 slices
		{16384, 4096, 0, 256, 2, 16},      // 6.7B fc1: 4096 units: K split, 2 slices
		{5120, 20480, 0, 264, 8, 0},       // 13B fc2: 6400 units, stream-K
		{36864, 9216, 0, 264, 2, 0},       // 66B fc1: 78.5 units per block
		{36864, 9216, 288, 288, 1, 0},     // one block per row block
		{1024, 4160, 1 << 20, 264, 33, 1}, // one block per unit
		{1024, 4160, 24, 24, 3, 11},       // K split with a ragged last slice
		{384, 1536, 2, 2, 2, 0},           // stream-K, the middle row block split
		{16, 64, 0, 1, 1, 1},
		{48, 320, 2, 2, 2, 2},
	} {
		blocks, maxC, spb := SpMM24TCPlan(c.rows, c.cols, c.grid)
		if blocks != c.blocks || maxC != c.maxC || spb != c.spb {
			t.Errorf("%dx%d grid %d: %d blocks, up to %d per row block, %d steps per block; want %d, %d, %d",
				c.rows, c.cols, c.grid, blocks, maxC, spb, c.blocks, c.maxC, c.spb)
		}
		var k Set
		for rep := 0; rep < 2; rep++ { // computed, then memoized
			if p := k.tcPlan(c.rows, c.cols, c.grid); p != (tcPlan{blocks, maxC, spb}) {
				t.Errorf("%dx%d grid %d: memoized plan %+v (call %d)", c.rows, c.cols, c.grid, p, rep)
			}
		}
		wb, cb := SpMM24TCWorkspace(c.rows, c.cols, c.grid)
		if mwb, mcb := k.SpMM24TCWorkspace(c.rows, c.cols, c.grid); mwb != wb || mcb != cb {
			t.Errorf("%dx%d grid %d: memoized workspace %d + %d, want %d + %d", c.rows, c.cols, c.grid, mwb, mcb, wb, cb)
		}
		rb := (c.rows + 127) / 128
		if maxC == 1 && (wb != 0 || cb != 0) || maxC > 1 && (wb != rb*maxC*16*128*4 || cb != 4*rb) {
			t.Errorf("%dx%d grid %d: workspace %d + %d bytes", c.rows, c.cols, c.grid, wb, cb)
		}
	}
	// tcBlockOf agrees with the shares [b*U/G, (b+1)*U/G), none empty.
	for _, uG := range [][2]int{{1024, 264}, {7, 7}, {100, 3}, {20736, 264}, {5, 1}} {
		U, G := uG[0], uG[1]
		for b := 0; b < G; b++ {
			lo, hi := b*U/G, (b+1)*U/G
			if lo >= hi {
				t.Fatalf("U %d G %d: block %d has no units", U, G, b)
			}
			for u := lo; u < hi; u++ {
				if got := tcBlockOf(int64(u), int64(U), G); got != b {
					t.Fatalf("U %d G %d: unit %d in block %d, tcBlockOf says %d", U, G, u, b, got)
				}
			}
		}
	}
}

func runEmuTC(t *testing.T, rng *rand.Rand, rows, cols, M, target int, roundX bool, mut int) (float64, error) {
	c := makeNM(t, rng, rows, cols, 2, 4, true)
	x, ldx, bias, ldy := skinnyInputs(rng, rows, cols, M, roundX)
	y := nanSlice(M * ldy)
	perm := func(n int) []int { return rng.Perm(n) } // blocks finish in any order
	valReads, idxReads, err := emuSpmm24tc(y, ldy, x, ldx, toBF16(c.vals), c.idx, bias, M, rows, cols, target, mut, perm)
	if err != nil {
		return math.Inf(1), err
	}
	if mut == mutNone {
		// The layout is the portable bytes moved (TestSpMM24TCLayout) plus
		// zero padding: every element read at most once, as many reads as
		// the portable layout has elements.
		for _, rc := range []struct {
			what  string
			reads []int
			want  int
		}{{"value", valReads, len(c.vals)}, {"index byte", idxReads, len(c.idx)}} {
			total := 0
			for i, n := range rc.reads {
				if n > 1 {
					t.Fatalf("%dx%d M %d target %d: %s %d of the layout read %d times", rows, cols, M, target, rc.what, i, n)
				}
				total += n
			}
			if total != rc.want {
				t.Fatalf("%dx%d M %d target %d: %d %s reads, want %d", rows, cols, M, target, total, rc.what, rc.want)
			}
		}
	}
	want := refSpMM(c.dense, rows, cols, x, ldx, M, bias)
	return relL2(unpad(y, M, rows, ldy), want), nil
}

func TestEmulateSpMM24TC(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	shapes := [][2]int{{16, 64}, {16, 128}, {32, 192}, {48, 320}, {64, 1024}, {128, 576}, {256, 1024}, {384, 1536}, {144, 4160}, {8192, 128}}
	for _, sh := range shapes {
		rows, cols := sh[0], sh[1]
		for _, M := range []int{1, 3, 8, 9, 16} {
			// The default plan, one slice, a few slices of several chunks,
			// and one step per slice.
			for _, target := range []int{0, 1, 2, 3, 1 << 20} {
				if (rows >= 8192 || cols >= 4096) && (M != 9 || target == 1<<20) {
					continue // large shapes: one M
				}
				e, err := runEmuTC(t, rng, rows, cols, M, target, true, mutNone)
				if err != nil {
					t.Fatalf("%dx%d M %d target %d: %v", rows, cols, M, target, err)
				}
				if e > 1e-5 {
					t.Errorf("%dx%d M %d target %d: relative L2 error %.3g", rows, cols, M, target, e)
				}
			}
		}
	}
	// f32 activations are rounded to bf16 on the fly.
	e, err := runEmuTC(t, rng, 64, 512, 16, 0, false, mutNone)
	if err != nil || e > 1e-2 || e < 1e-6 {
		t.Errorf("f32 x rounding: relative L2 error %.3g (want 1e-6..1e-2), %v", e, err)
	}
}

// TestEmulateSpMM24TCMutations shows that the emulated mma.sp catches
// mapping bugs: every mutation of the mirror must fail.
func TestEmulateSpMM24TCMutations(t *testing.T) {
	for mut := mutNone + 1; mut < mutCount; mut++ {
		rng := rand.New(rand.NewPCG(31, uint64(mut)))
		e, err := runEmuTC(t, rng, 32, 256, 16, 1, true, mut)
		if err == nil && e < 0.1 {
			t.Errorf("mutation %d went unnoticed: relative L2 error %.3g", mut, e)
		}
		t.Logf("mutation %d: error %.3g, %v", mut, e, err)
	}
}

// TestSpMM24TCLayout: the streaming layout holds every portable byte
// exactly once, where the kernel's loads expect it, and zeros elsewhere.
func TestSpMM24TCLayout(t *testing.T) {
	for _, sh := range [][2]int{{16, 64}, {32, 128}, {48, 320}, {16, 448}} {
		rows, cols := sh[0], sh[1]
		// Distinct 16-bit tags: value (row, k) = row*cols/2 + k + 1.
		vals := make([]byte, rows*cols)
		for i := 0; i < rows*cols/2; i++ {
			binary.LittleEndian.PutUint16(vals[2*i:], uint16(i+1))
		}
		idx := make([]byte, rows*cols/8)
		for i := range idx {
			idx[i] = byte(i%251 + 1)
		}
		tv, ti, err := SpMM24TCLayout(vals, idx, rows, cols)
		if err != nil {
			t.Fatal(err)
		}
		vb, ib := SpMM24TCLayoutBytes(rows, cols)
		if len(tv) != vb || len(ti) != ib {
			t.Fatalf("%dx%d: %d, %d bytes; SpMM24TCLayoutBytes says %d, %d", rows, cols, len(tv), len(ti), vb, ib)
		}
		steps := (cols + 127) / 128
		seen := make([]int, rows*cols/2+1)
		for rg := 0; rg < rows/16; rg++ {
			for st := 0; st < steps; st++ {
				for h := 0; h < 2; h++ {
					for rh := 0; rh < 2; rh++ {
						for lane := 0; lane < 32; lane++ {
							g, tt := lane>>2, lane&3
							row := 16*rg + g + 8*rh
							for e := 0; e < 8; e++ {
								got := int(binary.LittleEndian.Uint16(tv[(((rg*steps+st)*4+2*h+rh)*32+lane)*16+2*e:]))
								seen[got]++
								k := 64*st + 32*h + 8*tt + e
								want := 0
								if 128*st+64*h < cols {
									want = row*cols/2 + k + 1
								}
								if got != want {
									t.Fatalf("%dx%d: value (row %d, k %d) is %d, want %d", rows, cols, row, k, got, want)
								}
							}
						}
						for g := 0; g < 8; g++ {
							row := 16*rg + g + 8*rh
							for e := 0; e < 8; e++ {
								got := ti[(((rg*steps+st)*4+2*h+rh)*8+g)*8+e]
								var want byte
								if 128*st+64*h < cols {
									want = idx[row*cols/8+16*st+8*h+e]
								}
								if got != want {
									t.Fatalf("%dx%d: index byte (row %d, %d) is %d, want %d", rows, cols, row, 16*st+8*h+e, got, want)
								}
							}
						}
					}
				}
			}
		}
		for v, n := range seen[1:] {
			if n != 1 {
				t.Fatalf("%dx%d: portable value %d appears %d times", rows, cols, v, n)
			}
		}
	}
	if _, _, err := SpMM24TCLayout(make([]byte, 24*64), make([]byte, 24*8), 24, 64); err == nil {
		t.Error("24 rows: no error")
	}
	if _, _, err := SpMM24TCLayout(make([]byte, 10), make([]byte, 16*8), 16, 64); err == nil {
		t.Error("short values: no error")
	}
}
