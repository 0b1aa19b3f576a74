// Package asmcheck checks amd64 assembly files for instructions that
// need a newer instruction set than the function's name promises.
//
// Requires lists each function's "// Requires:" line (as avo writes it),
// so a package can check the features its dispatch tests against them.
//
// The contract AVX2Violations enforces: a TEXT symbol whose name ends in
// "AVX2" runs on CPUs without AVX-512, so it must not name X16-X31,
// Y16-Y31, any Z register or an opmask register K0-K7, use an AVX-512
// modifier (a "." suffix on a V instruction: Go's .Z, .BCST, .SAE and
// rounding forms) or an instruction that exists only in EVEX form
// (VPTERNLOGD, VPERMT2PS, VMOVDQU32, ...: a list of the common ones), all
// of which fault with SIGILL there. (What its Requires line lists is the
// caller's to check against its dispatch, with Requires.) Machines with
// AVX-512 run such code without complaint, which is why a test of the
// kernels' results alone does not catch it.
package asmcheck

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

var (
	textLine = regexp.MustCompile(`^TEXT\s+·?([A-Za-z0-9_]+)`)
	// evexOnly matches the registers that exist only with AVX-512.
	evexOnly = regexp.MustCompile(`\b([XY](1[6-9]|2[0-9]|3[01])|Z([0-9]|[12][0-9]|3[01])|K[0-7])\b`)
	// evexMnemonic matches instructions that have no VEX form (AVX-512
	// only), by Go's names; VPCMPEQ*/VPCMPGT* (AVX2) do not match.
	evexMnemonic = regexp.MustCompile(`^(VPTERNLOG[DQ]|VPERM[TI]2\w+|VPERM[BW]|VSCALEF\w+|VRNDSCALE\w+|VGETEXP\w+|VGETMANT\w+|` +
		`VFIXUPIMM\w+|VRANGE\w+|VREDUCE\w+|V(P)?COMPRESS\w+|V(P)?EXPAND\w+|VPMOVU?S?[DQW][BWD]|VPMOV[BWDQ]2M|VPMOVM2[BWDQ]|` +
		`V(EXTRACT|INSERT)[FI](32X4|64X2|32X8|64X4)|VBROADCAST[FI](32X2|32X4|64X2|32X8|64X4)|VMOVDQ[AU](8|16|32|64)|` +
		`VP(AND|ANDN|OR|XOR)[DQ]|VP?BLENDM\w+|VPCMPU?[BWDQ]|VPTESTN?M\w+|VPBROADCASTM\w+|VPRO[LR]V?[DQ]|VPSRAV?Q|VPABSQ|` +
		`VP(MAX|MIN)[SU]Q|VPMULLQ|VCVTT?P[SD]2U\w+|VCVTU\w+|VCVTQQ2\w+|VCVTT?P[SD]2QQ|VALIGN[DQ]|VPCONFLICT\w+|VPLZCNT\w+|` +
		`VRCP14\w+|VRSQRT14\w+|VGATHERPF\w+|VSCATTER\w+|VPSCATTER\w+|K[A-Z]+[BWDQ])$`)
)

// walk reads Go assembly from r and calls text for each TEXT line (the
// symbol, and the extensions its preceding "// Requires:" line lists, nil
// without one) and body for every other line but Requires lines, with
// the current symbol ("" before the first) and the 1-based line number n.
func walk(r io.Reader, src string, text func(fn string, requires []string), body func(n int, fn, line string)) error {
	var (
		requires []string
		fn       string
	)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "// Requires:"):
			requires = nil
			for _, f := range strings.Split(strings.TrimPrefix(line, "// Requires:"), ",") {
				requires = append(requires, strings.TrimSpace(f))
			}
		case strings.HasPrefix(line, "TEXT"):
			m := textLine.FindStringSubmatch(line)
			if m == nil {
				return fmt.Errorf("%s:%d: cannot parse TEXT line %q", src, n, line)
			}
			fn = m[1]
			text(fn, requires)
			requires = nil
		default:
			body(n, fn, line)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading %s: %w", src, err)
	}
	return nil
}

// AVX2Violations reads the Go assembly file at path and returns one line
// per violation of the package contract, as "name:line: reason", in file
// order, and how many *AVX2 functions it checked (so that a caller can
// tell a clean file from one with nothing to check).
func AVX2Violations(path string) (bad []string, checked int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	return avx2Violations(f, path)
}

// avx2Violations is AVX2Violations on r (src names it in errors).
func avx2Violations(r io.Reader, src string) (bad []string, checked int, err error) {
	avx2 := false
	text := func(fn string, _ []string) {
		avx2 = strings.HasSuffix(fn, "AVX2")
		if avx2 {
			checked++
		}
	}
	body := func(n int, fn, line string) {
		if !avx2 {
			return
		}
		code, _, _ := strings.Cut(line, "//")
		fields := strings.Fields(code)
		if len(fields) == 0 {
			return
		}
		op := fields[0]
		switch {
		case evexOnly.MatchString(code):
			bad = append(bad, fmt.Sprintf("%s:%d: %s needs AVX-512: %s", fn, n, evexOnly.FindString(code), strings.TrimSpace(code)))
		case strings.HasPrefix(op, "V") && strings.Contains(op, "."):
			bad = append(bad, fmt.Sprintf("%s:%d: the %s modifier needs AVX-512: %s", fn, n, op[strings.Index(op, "."):], strings.TrimSpace(code)))
		case evexMnemonic.MatchString(op):
			bad = append(bad, fmt.Sprintf("%s:%d: %s exists only with AVX-512: %s", fn, n, op, strings.TrimSpace(code)))
		}
	}
	if err := walk(r, src, text, body); err != nil {
		return nil, 0, err
	}
	return bad, checked, nil
}

// Requires returns the instruction-set extensions each TEXT symbol's
// preceding "// Requires:" line in the Go assembly file at path lists
// (avo's names: AVX, AVX2, FMA3, AVX512F, BMI2, ...); symbols without
// such a line are absent.
func Requires(path string) (map[string][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return requires(f, path)
}

// requires is Requires on r (src names it in errors).
func requires(r io.Reader, src string) (map[string][]string, error) {
	out := map[string][]string{}
	err := walk(r, src, func(fn string, requires []string) {
		if requires != nil {
			out[fn] = requires
		}
	}, func(int, string, string) {})
	if err != nil {
		return nil, err
	}
	return out, nil
}
