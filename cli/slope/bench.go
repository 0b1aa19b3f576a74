package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"time"

	"github.com/slopeml/slope/internal/rusage"
	"github.com/spf13/cobra"
)

func newBenchCmd() *cobra.Command {
	var promptLen, genLen, threads, batch, warmup int
	var seed uint64
	var cpuProfile string
	var allLogits bool
	var device deviceFlags
	cmd := &cobra.Command{
		Use:   "bench MODEL",
		Short: "Time prefill and decode on random token ids",
		Long: "bench runs a prompt of --prompt-len random ids through the model (prefill), then\n" +
			"--gen-len single-token steps with the KV cache (decode), and prints tokens per\n" +
			"second for each and the process's peak resident memory. As in generation, only\n" +
			"the last position's logits are computed, unless --all-logits (as a with-past ONNX\n" +
			"export does in ONNX Runtime). The timed run follows --warmup untimed ones, which\n" +
			"take first-use costs (page faults, GPU plans) out of the figures. On a GPU,\n" +
			"--gpu-profile also prints each op's GPU time in the timed run (CUDA events).",
		Args: exactArgs("MODEL"),
		RunE: func(cmd *cobra.Command, args []string) (rerr error) {
			if promptLen < 1 || genLen < 1 || batch < 1 || warmup < 0 {
				return usagef(cmd, "--prompt-len, --gen-len and --batch must be >= 1, --warmup >= 0")
			}
			if err := checkGPUProfile(cmd, device.device, device.profile); err != nil {
				return err
			}
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return fmt.Errorf("--cpuprofile: %w", err)
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					f.Close()
					os.Remove(cpuProfile)
					return fmt.Errorf("--cpuprofile: %w", err)
				}
				defer func() {
					pprof.StopCPUProfile()
					cerr := f.Close()
					switch {
					case rerr != nil:
						os.Remove(cpuProfile) // a failed run leaves no profile
					case cerr != nil:
						rerr = fmt.Errorf("--cpuprofile: %w", cerr)
					}
				}()
			}
			start := time.Now()
			m, err := openModel(cmd, args[0], device)
			if err != nil {
				return err
			}
			defer m.Close()
			load := time.Since(start)
			if mp := m.MaxPositions(); promptLen > mp || genLen > mp-promptLen {
				return usagef(cmd, "--prompt-len %d + --gen-len %d: more than the model's %d positions", promptLen, genLen, mp)
			}
			s, err := m.NewSession(batch, promptLen+genLen)
			if err != nil {
				return fmt.Errorf("--batch %d: %w", batch, err)
			}
			defer s.Close()
			s.Threads = threads
			rng := rand.New(rand.NewPCG(seed, 1))
			ids := make([][]int32, batch)
			mask := make([][]int32, batch)
			for b := range ids {
				ids[b] = make([]int32, promptLen)
				mask[b] = make([]int32, promptLen)
				for t := range ids[b] {
					ids[b][t], mask[b][t] = int32(rng.IntN(m.Vocab())), 1
				}
			}
			step := s.StepLast
			if allLogits {
				step = s.Step
			}
			one := make([][]int32, batch)
			ones := make([][]int32, batch)
			for b := range one {
				ones[b] = []int32{1}
			}
			// run times one prefill of the prompt and genLen decode steps.
			run := func() (prefill, decode time.Duration, err error) {
				s.Reset()
				t0 := time.Now()
				if _, err := step(ids, mask); err != nil {
					return 0, 0, err
				}
				prefill = time.Since(t0)
				t1 := time.Now()
				for range genLen {
					for b := range one {
						one[b] = []int32{int32(rng.IntN(m.Vocab()))}
					}
					if _, err := s.StepLast(one, ones); err != nil {
						return 0, 0, err
					}
				}
				return prefill, time.Since(t1), nil
			}
			// Warm-up runs take first-use costs (page faults of the
			// mapped weights; GPU plans and algorithm searches) out of
			// the timed run.
			for range warmup {
				if _, _, err := run(); err != nil {
					return err
				}
			}
			if err := m.gpu.ProfileReset(); err != nil { // nil on the CPU: nothing
				return err
			}
			prefill, decode, err := run()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "model    %s (load %v)\n", args[0], load.Round(time.Millisecond))
			fmt.Fprintf(out, "prefill  %d x %d tokens in %v: %.1f tok/s\n", batch, promptLen, prefill.Round(time.Microsecond), float64(batch*promptLen)/prefill.Seconds())
			fmt.Fprintf(out, "decode   %d x %d tokens in %v: %.1f tok/s\n", batch, genLen, decode.Round(time.Microsecond), float64(batch*genLen)/decode.Seconds())
			fmt.Fprintf(out, "peak RSS %.1f MiB\n", float64(rusage.PeakRSS())/(1<<20))
			fmt.Fprintln(out, m.deviceLine())
			if m.gpu.Profiling() {
				return m.gpu.ProfileReport(out, 1, "run")
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&promptLen, "prompt-len", 128, "prompt tokens per sequence")
	cmd.Flags().IntVar(&genLen, "gen-len", 32, "decoded tokens per sequence")
	cmd.Flags().IntVar(&batch, "batch", 1, "sequences")
	cmd.Flags().IntVar(&warmup, "warmup", 1, "untimed runs (prefill and decode) before the timed one")
	cmd.Flags().IntVar(&threads, "threads", 0, "goroutines per step (0: all cores)")
	addDeviceFlag(cmd, &device)
	cmd.Flags().Uint64Var(&seed, "seed", 1, "seed of the random ids")
	cmd.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile (go tool pprof) to this file")
	cmd.Flags().BoolVar(&allLogits, "all-logits", false, "prefill computes the logits of every position, not just the last")
	cmd.Flags().BoolVar(&device.profile, "gpu-profile", false, "with --device cuda or cuda-f32: print each op's GPU time in the timed run (prefill and decode apart)")
	return cmd
}
