package asmcheck

import (
	"strings"
	"testing"
)

func TestAVX2Violations(t *testing.T) {
	src := `// func aAVX2()
// Requires: AVX, AVX2, FMA3
TEXT ·aAVX2(SB), NOSPLIT, $0-8
	VPERMPS Y15, Y0, Y16 // Y17 in a comment is fine
	VMOVUPS Y1, (AX)
	RET

// Requires: AVX, AVX512F
TEXT ·bAVX512(SB), NOSPLIT, $0-8
	VMOVUPS Z3, Z20
	KMOVW K1, AX
	RET

// Requires: AVX, AVX512F, AVX512VL (not this check's: the caller's, with Requires)
TEXT ·cAVX2(SB), NOSPLIT, $0-8
	VADDPS X31, X1, X2
	KMOVW K0, AX
	VMOVUPS Z0, (AX)
	RET

TEXT ·dAVX2(SB), NOSPLIT, $0-8
	VMOVUPS Y15, Y14
	MOVQ X16abc, AX
	VPCMPEQD Y1, Y2, Y3
	VPCMPGTD Y1, Y2, Y3
	VPXOR Y1, Y2, Y3
	VPERMILPS Y1, Y2, Y3
	VBROADCASTSS (AX), Y1
	RET

TEXT ·eAVX2(SB), NOSPLIT, $0-8
	VPTERNLOGD $0x96, Y1, Y2, Y3
	VMOVUPS.Z (AX), Y1
	VADDPS.BCST (AX), Y1, Y2
	VPXORD Y1, Y2, Y3
	VMOVDQU32 Y1, (AX)
	VPCMPD $1, Y1, Y2, AX
	RET
`
	got, checked, err := avx2Violations(strings.NewReader(src), "test.s")
	if err != nil {
		t.Fatal(err)
	}
	if checked != 4 { // aAVX2, cAVX2, dAVX2, eAVX2
		t.Errorf("checked %d AVX2 functions, want 4", checked)
	}
	want := []string{
		"aAVX2:4: Y16 needs AVX-512",
		"cAVX2:16: X31 needs AVX-512",
		"cAVX2:17: K0 needs AVX-512",
		"cAVX2:18: Z0 needs AVX-512",
		"eAVX2:32: VPTERNLOGD exists only with AVX-512",
		"eAVX2:33: the .Z modifier needs AVX-512",
		"eAVX2:34: the .BCST modifier needs AVX-512",
		"eAVX2:35: VPXORD exists only with AVX-512",
		"eAVX2:36: VMOVDQU32 exists only with AVX-512",
		"eAVX2:37: VPCMPD exists only with AVX-512",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d violations %q, want %d", len(got), got, len(want))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("violation %d = %q, want prefix %q", i, got[i], want[i])
		}
	}
}

func TestRequires(t *testing.T) {
	src := `// Requires: AVX, AVX2, FMA3
TEXT ·aAVX2(SB), NOSPLIT, $0-8
	RET

TEXT ·bare(SB), NOSPLIT, $0-8
	RET

// Requires: AVX512F, BMI2
TEXT ·cAVX512(SB), NOSPLIT, $0-8
	RET
`
	got, err := requires(strings.NewReader(src), "test.s")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || strings.Join(got["aAVX2"], " ") != "AVX AVX2 FMA3" || strings.Join(got["cAVX512"], " ") != "AVX512F BMI2" {
		t.Fatalf("Requires = %q", got)
	}
}

func TestMissingFile(t *testing.T) {
	if _, _, err := AVX2Violations("no-such.s"); err == nil {
		t.Error("AVX2Violations: a missing file gave no error")
	}
	if _, err := Requires("no-such.s"); err == nil {
		t.Error("Requires: a missing file gave no error")
	}
}
