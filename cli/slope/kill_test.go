package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format"
)

// cliEnv makes the test binary run as the slope command (see TestMain):
// tests start it as a subprocess to kill it.
const cliEnv = "SLOPE_CLI_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(cliEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// slopeCmd is the test binary re-executed as slope with args.
func slopeCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), cliEnv+"=1")
	return cmd
}

// tempFiles lists the format writer's temporary files of path's checkpoint.
func tempFiles(t *testing.T, path string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	prefix := "." + filepath.Base(path) + ".tmp-"
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestTrainKilledAndResumed: slope train with a save every step, killed
// with SIGKILL at several points (some while a checkpoint is being
// written), leaves either no checkpoint or a complete one, and resuming
// from it ends bit-identical to an uninterrupted run. Temporary files of
// the killed writer stay behind and do not disturb the resumed run.
func TestTrainKilledAndResumed(t *testing.T) {
	const steps = 6
	model := convertTiny(t, "2:4")
	base := t.TempDir()
	data := filepath.Join(base, "train.u16")
	writeTokenFile(t, data, 2000, 50)
	flags := []string{"--data", data, "--batch", "2", "--seq", "16", "--lr", "1e-3", "--warmup", "1", "--threads", "1",
		"--seed", "7", "--mask-refresh", "2", "--save-every", "1", "--print-every", "0", "--steps", fmt.Sprint(steps)}

	fullDir := filepath.Join(base, "full")
	if err := os.Mkdir(fullDir, 0o755); err != nil {
		t.Fatal(err)
	}
	full := filepath.Join(fullDir, "ckpt.slope")
	start := time.Now()
	if out, err := slopeCmd(append([]string{"train", model, "--out", full}, flags...)...).CombinedOutput(); err != nil {
		t.Fatalf("uninterrupted run: %v\n%s", err, out)
	}
	dur := time.Since(start)
	t.Logf("uninterrupted run of %d steps: %v", steps, dur)
	want := readCheckpoint(t, full)
	if want.step != steps {
		t.Fatalf("uninterrupted run ends at step %d", want.step)
	}

	// Kills: two after a fraction of the uninterrupted run's time, three
	// as soon as the n-th temporary checkpoint file is seen.
	type kill struct {
		frac   float64
		nthTmp int
	}
	kills := []kill{{frac: 0.3}, {frac: 0.7}, {nthTmp: 1}, {nthTmp: 3}, {nthTmp: 5}}
	midWrite := 0
	for i, k := range kills {
		dir := filepath.Join(base, fmt.Sprint("kill", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		ckpt := filepath.Join(dir, "ckpt.slope")
		var stderr bytes.Buffer
		cmd := slopeCmd(append([]string{"train", model, "--out", ckpt}, flags...)...)
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		exited, killed := false, false
		var werr error
		if k.nthTmp == 0 {
			select {
			case werr = <-done:
				exited = true
			case <-time.After(time.Duration(k.frac * float64(dur))):
			}
		} else {
			seen := map[string]bool{}
		poll:
			for {
				select {
				case werr = <-done:
					exited = true
					break poll
				default:
				}
				for _, n := range tempFiles(t, ckpt) {
					seen[n] = true
				}
				if len(seen) >= k.nthTmp {
					break poll
				}
			}
		}
		if !exited {
			if err := cmd.Process.Kill(); err == nil {
				killed = true
			}
			werr = <-done
		}
		left := tempFiles(t, ckpt)
		if killed && len(left) > 0 {
			midWrite++
		}
		if !killed && werr != nil {
			t.Fatalf("kill %d: the run failed on its own: %v\n%s", i, werr, stderr.String())
		}

		// No checkpoint, or a complete one.
		at := 0
		if _, err := os.Stat(ckpt); err == nil {
			f, err := format.Open(ckpt, nil)
			if err != nil {
				t.Fatalf("kill %d: checkpoint left by the killed run: %v", i, err)
			}
			if err := f.Verify(nil); err != nil {
				f.Close()
				t.Fatalf("kill %d: checkpoint left by the killed run: %v", i, err)
			}
			at = int(f.Manifest().GetTraining().GetStep())
			f.Close()
		} else if !os.IsNotExist(err) {
			t.Fatal(err)
		}
		t.Logf("kill %d (%+v): killed %v, checkpoint at step %d, %d temporary files left %q", i, k, killed, at, len(left), left)

		switch {
		case at == steps:
			// Killed after the last save (or not killed): nothing to resume.
		case at == 0:
			// Killed before the first save: start again.
			if out, err := slopeCmd(append([]string{"train", model, "--out", ckpt}, flags...)...).CombinedOutput(); err != nil {
				t.Fatalf("kill %d: rerun: %v\n%s", i, err, out)
			}
		default:
			if out, err := slopeCmd(append([]string{"train", model, "--resume", ckpt, "--out", ckpt}, flags...)...).CombinedOutput(); err != nil {
				t.Fatalf("kill %d: resume from step %d: %v\n%s", i, at, err, out)
			}
		}
		got := readCheckpoint(t, ckpt)
		if got.step != steps {
			t.Fatalf("kill %d: final checkpoint at step %d, want %d", i, got.step, steps)
		}
		if !proto.Equal(got.state, want.state) {
			t.Fatalf("kill %d: training state\n%v\nwant\n%v", i, got.state, want.state)
		}
		if len(got.raw) != len(want.raw) {
			t.Fatalf("kill %d: %d tensors, want %d", i, len(got.raw), len(want.raw))
		}
		for name, w := range want.raw {
			if g, ok := got.raw[name]; !ok || !bytes.Equal(g, w) {
				t.Fatalf("kill %d: tensor %s differs from the uninterrupted run's", i, name)
			}
		}
	}
	t.Logf("%d of %d kills landed while a checkpoint was being written", midWrite, len(kills))
	if midWrite == 0 {
		t.Errorf("no kill landed while a checkpoint was being written")
	}
}

type checkpoint struct {
	step  int
	state proto.Message
	raw   map[string][]byte
}

// readCheckpoint verifies path and returns its training state and the raw
// bytes of every tensor.
func readCheckpoint(t *testing.T, path string) checkpoint {
	t.Helper()
	f, err := format.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Verify(nil); err != nil {
		t.Fatal(err)
	}
	tr := f.Manifest().GetTraining()
	c := checkpoint{step: int(tr.GetStep()), state: proto.Clone(tr), raw: map[string][]byte{}}
	for _, d := range f.Tensors() {
		b, err := f.Raw(d.Name)
		if err != nil {
			t.Fatal(err)
		}
		c.raw[d.Name] = bytes.Clone(b)
	}
	return c
}

// interruptTrain starts slope train on model with flags, sends sig once
// its log shows 3 steps, and returns the checkpoint path, the exit status
// and stderr.
func interruptTrain(t *testing.T, model string, flags []string, sig os.Signal) (ckpt string, code int, stderr string) {
	t.Helper()
	base := t.TempDir()
	ckpt = filepath.Join(base, "ckpt.slope")
	logPath := filepath.Join(base, "log.jsonl")
	var errBuf bytes.Buffer
	cmd := slopeCmd(append([]string{"train", model, "--out", ckpt, "--log", logPath}, flags...)...)
	cmd.Stderr = &errBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		b, _ := os.ReadFile(logPath)
		if bytes.Count(b, []byte(`"type":"step"`)) >= 3 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("the run ended before it was interrupted: %v\n%s", err, errBuf.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no third step logged in 2 minutes\n%s", errBuf.String())
		}
	}
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	<-done
	return ckpt, cmd.ProcessState.ExitCode(), errBuf.String()
}

// TestTrainInterrupted: Ctrl-C (SIGINT) ends slope train after the step in
// progress with a complete checkpoint, no temporary file and exit status
// 130 (SIGTERM: 143), and resuming that checkpoint ends bit-identical to
// a run that was never interrupted.
func TestTrainInterrupted(t *testing.T) {
	model := convertTiny(t, "2:4")
	data := filepath.Join(t.TempDir(), "train.u16")
	writeTokenFile(t, data, 2000, 50)
	flags := []string{"--data", data, "--batch", "2", "--seq", "16", "--lr", "1e-3", "--warmup", "1", "--threads", "1",
		"--seed", "7", "--mask-refresh", "2", "--print-every", "0", "--steps", "100000"}

	if ckpt, code, stderr := interruptTrain(t, model, flags, syscall.SIGTERM); code != 143 || readCheckpoint(t, ckpt).step < 3 {
		t.Fatalf("after SIGTERM: exit status %d, want 143\n%s", code, stderr)
	}
	ckpt, code, stderr := interruptTrain(t, model, flags, os.Interrupt)
	if code != exitInterrupted {
		t.Fatalf("exit status %d after SIGINT, want %d\n%s", code, exitInterrupted, stderr)
	}
	if !strings.Contains(stderr, "interrupt: stopping cleanly; a second one ends the process at once") ||
		!strings.Contains(stderr, "interrupted after step") || !strings.Contains(stderr, "--resume "+ckpt) {
		t.Fatalf("stderr does not say where the run stopped and how to resume it:\n%s", stderr)
	}
	if left := tempFiles(t, ckpt); len(left) > 0 {
		t.Fatalf("temporary files left: %q", left)
	}
	base := t.TempDir()
	got := readCheckpoint(t, ckpt)
	if got.step < 3 || got.step >= 100000 {
		t.Fatalf("checkpoint at step %d", got.step)
	}
	t.Logf("interrupted at step %d", got.step)

	// Resumed to two steps further, against a run that stops there by
	// itself.
	stop := fmt.Sprint(got.step + 2)
	resumed := filepath.Join(base, "resumed.slope")
	if out, err := slopeCmd(append([]string{"train", model, "--resume", ckpt, "--out", resumed, "--stop-after", stop}, flags...)...).CombinedOutput(); err != nil {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	straight := filepath.Join(base, "straight.slope")
	if out, err := slopeCmd(append([]string{"train", model, "--out", straight, "--stop-after", stop}, flags...)...).CombinedOutput(); err != nil {
		t.Fatalf("uninterrupted run: %v\n%s", err, out)
	}
	a, b := readCheckpoint(t, resumed), readCheckpoint(t, straight)
	if a.step != got.step+2 || !proto.Equal(a.state, b.state) {
		t.Fatalf("resumed state\n%v\nuninterrupted\n%v", a.state, b.state)
	}
	for name, w := range b.raw {
		if g, ok := a.raw[name]; !ok || !bytes.Equal(g, w) {
			t.Fatalf("tensor %s of the resumed run differs from the uninterrupted run's", name)
		}
	}
}
