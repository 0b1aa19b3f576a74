package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/slopeml/slope/convert"
)

// writeInitConfig writes a one-layer OPT config.json (hidden 16) with the
// feed-forward width ffn at path, and returns path.
func writeInitConfig(t *testing.T, path string, ffn int) string {
	t.Helper()
	cfg := fmt.Sprintf(`{"model_type": "opt", "vocab_size": 64, "hidden_size": 16,
 "ffn_dim": %d, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32,
 "word_embed_proj_dim": 16, "do_layer_norm_before": true, "activation_function": "relu",
 "enable_bias": true, "layer_norm_elementwise_affine": true, "tie_word_embeddings": true}`, ffn)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestInitCommand(t *testing.T) {
	dir := t.TempDir()
	cfg := writeInitConfig(t, filepath.Join(dir, "config.json"), 32)
	out := filepath.Join(dir, "m.slope")
	code, stdout, stderr := runSlope("init", "--config", cfg, "--out", out, "--seed", "3")
	if code != 0 || !strings.Contains(stdout, "6 weights pruned 2:4 with random masks") {
		t.Fatalf("init: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	// The summary says which patterns were used, and why weights stayed
	// dense (--out is replaced: it is a container).
	for _, c := range []struct {
		args           []string
		stdout, stderr string
	}{
		{[]string{"--nm", "1:3"}, "no weights pruned", "linear weights left dense: in_features 16 is not a multiple of 3"},
		{[]string{"--nm", "2:8", "--nm-layers", "0=4:8"}, "6 weights pruned 4:8 with random masks", ""},
	} {
		code, stdout, stderr := runSlope(append([]string{"init", "--config", cfg, "--out", out}, c.args...)...)
		if code != 0 || !strings.Contains(stdout, c.stdout) || !strings.Contains(stderr, c.stderr) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", c.args, code, stdout, stderr)
		}
	}
	// A weight too wide for the aspect-ratio rule stays dense, the note
	// names --prune-wide, and init has it.
	wide := writeInitConfig(t, filepath.Join(dir, "wide.json"), 96)
	if code, stdout, stderr := runSlope("init", "--config", wide, "--out", out); code != 0 || !strings.Contains(stdout, "4 weights pruned") || !strings.Contains(stderr, "--prune-wide") {
		t.Errorf("wide: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if code, stdout, stderr := runSlope("init", "--config", wide, "--out", out, "--prune-wide"); code != 0 || !strings.Contains(stdout, "6 weights pruned") || strings.Contains(stderr, "left dense") {
		t.Errorf("wide --prune-wide: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if code, _, stderr = runSlope("init", "--config", cfg, "--out", out, "--seed", "3"); code != 0 {
		t.Fatalf("init again: exit %d, %q", code, stderr)
	}
	if code, stdout, stderr = runSlope("verify", out); code != 0 {
		t.Fatalf("verify: exit %d %q %q", code, stdout, stderr)
	}
	if code, _, stderr = runSlope("run", out, "--ids", "[[2, 5, 7]]", "--max-tokens", "3"); code != 0 {
		t.Fatalf("run: exit %d %q", code, stderr)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"init", "--out", out}, 2, "--config is required"},
		{[]string{"init", "--config", cfg}, 2, "--out is required"},
		{[]string{"init", "--config", filepath.Join(dir, "none.json"), "--out", out}, 1, "none.json"},
		{[]string{"init", "--config", cfg, "--out", out, "--nm", "5:4"}, 1, "--nm"},
	} {
		code, _, stderr := runSlope(c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d mentioning %q", c.args, code, stderr, c.code, c.want)
		}
	}
}

// TestPrunedSummary: patterns counted in order of first use, reasons for
// dense linear weights grouped, non-linear weights ignored.
func TestPrunedSummary(t *testing.T) {
	res := &convert.Result{Pruned: 3, Weights: []convert.WeightReport{
		{Name: "a", Linear: true, Choice: "2:4"},
		{Name: "b", Linear: true, Choice: "2:8"},
		{Name: "c", Linear: true, Choice: "2:4"},
		{Name: "d", Linear: true, Choice: "dense: too wide"},
		{Name: "e", Linear: true, Choice: "dense: too wide"},
		{Name: "f", Choice: "dense"},
		{Name: "g", Linear: true, Choice: "dense: pruning disabled (dense)"},
	}}
	pruned, dense := prunedSummary(res)
	if pruned != "3 weights pruned with random masks (2 2:4, 1 2:8)" || len(dense) != 1 || dense[0] != "2 linear weights left dense: too wide" {
		t.Errorf("%q %q", pruned, dense)
	}
}
