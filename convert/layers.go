package convert

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/slopeml/slope/format"
)

// LayerNM is one per-layer pattern override: decoder layers First..Last
// (inclusive) use pattern P, or stay dense.
type LayerNM struct {
	First, Last int
	P           format.NM
	Dense       bool
}

// Pattern is the override's pattern as written ("2:4" or "dense").
func (l LayerNM) Pattern() string {
	if l.Dense {
		return "dense"
	}
	return l.P.String()
}

// ParseNMLayers parses per-layer pattern overrides, a comma-separated
// list of RANGE=PATTERN where RANGE is a layer index "3" or an inclusive
// range "0-11" and PATTERN an N:M the format allows or "dense", e.g.
// "0-11=2:4,12-23=2:8". Ranges may not overlap; "" is no overrides.
// Whether the ranges fit a model is checked by CheckNMLayers.
func ParseNMLayers(s string) ([]LayerNM, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []LayerNM
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		rng, pat, ok := strings.Cut(item, "=")
		if !ok || rng == "" || pat == "" {
			return nil, fmt.Errorf("--nm-layers %q: item %q: want RANGE=PATTERN, e.g. 0-11=2:4", s, item)
		}
		var l LayerNM
		lo, hi, isRange := strings.Cut(strings.TrimSpace(rng), "-")
		var err error
		if l.First, err = strconv.Atoi(strings.TrimSpace(lo)); err != nil || l.First < 0 {
			return nil, fmt.Errorf("--nm-layers %q: item %q: layer %q is not a layer index (0, 1, ...)", s, item, lo)
		}
		l.Last = l.First
		if isRange {
			if l.Last, err = strconv.Atoi(strings.TrimSpace(hi)); err != nil || l.Last < 0 {
				return nil, fmt.Errorf("--nm-layers %q: item %q: layer %q is not a layer index (0, 1, ...)", s, item, hi)
			}
			if l.Last < l.First {
				return nil, fmt.Errorf("--nm-layers %q: item %q: range %d-%d is empty", s, item, l.First, l.Last)
			}
		}
		pat = strings.TrimSpace(pat)
		if pat == "dense" {
			l.Dense = true
		} else if l.P, err = format.ParseNM(pat); err != nil {
			return nil, fmt.Errorf("--nm-layers %q: item %q: %w", s, item, err)
		}
		for _, o := range out {
			if l.First <= o.Last && o.First <= l.Last {
				return nil, fmt.Errorf("--nm-layers %q: layers %d-%d and %d-%d overlap", s, o.First, o.Last, l.First, l.Last)
			}
		}
		out = append(out, l)
	}
	return out, nil
}

// CheckNMLayers checks that the overrides name layers of a model with
// layers decoder layers.
func CheckNMLayers(ls []LayerNM, layers int) error {
	for _, l := range ls {
		if l.Last >= layers {
			return fmt.Errorf("--nm-layers: layers %d-%d: the model has %d decoder layers (0-%d)", l.First, l.Last, layers, layers-1)
		}
	}
	return nil
}

// layerOf returns the decoder layer index of a canonical weight name.
func layerOf(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "decoder.layers.")
	if !ok {
		return 0, false
	}
	idx, _, ok := strings.Cut(rest, ".")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(idx)
	return i, err == nil
}

// layerPattern is the pattern of decoder layer i: the override that
// covers it, else the global one. over is the override used, if any.
func layerPattern(ls []LayerNM, i int, p format.NM, dense bool) (format.NM, bool, *LayerNM) {
	for k := range ls {
		if l := &ls[k]; l.First <= i && i <= l.Last {
			return l.P, l.Dense, l
		}
	}
	return p, dense, nil
}
