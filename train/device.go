package train

import (
	"errors"
	"fmt"

	"github.com/slopeml/slope/ops"
)

// Training on a device backend (ops.DeviceGradBackend: the cuda backend
// with float32 or bf16 activations): the forward and
// backward passes run on the backend's tensors, the cross-entropy too
// (only each row's loss comes back), and AdamW on its copies of the
// Params, gradients and moments (Trainer.opt). The host keeps its Params
// and moments as copies that are refreshed when the host needs them
// (Trainer.behind says which side is out of date, if one is):
//   - hostBehind: the device updated the Params (AdamW, a device mask
//     refresh); SyncHost copies them out before a checkpoint, a host
//     mask refresh or new adapters;
//   - deviceBehind: the host changed them (binding, a resume, new masks);
//     toDevice copies them in before the next pass.
//
// The arithmetic of a step is the CPU trainer's up to the rounding of
// the kernels (float32, or bf16 activations; AdamW is bit-identical
// given the same gradients), and checkpoints are the same format either
// way.

// behind names the out-of-date side of a device trainer's state.
type behind int

const (
	inSync behind = iota
	hostBehind
	deviceBehind
)

// bindDevice sets up the device state after a bind: the backend keeps
// the state when it can and every step runs on its tensors.
func (t *Trainer) bindDevice(be ops.GradBackend) error {
	dev, ok := be.(ops.DeviceGradBackend)
	if ok {
		for _, ps := range t.plan {
			if _, ok = ps.Step.(ops.DeviceGradStep); !ok {
				break
			}
		}
	}
	if !ok {
		if t.opt != nil {
			// The state is on the device and a step of the new plan
			// cannot run there.
			return fmt.Errorf("train: %s holds the training state, but the rebound model has an op it cannot run backward", be.Name())
		}
		return nil
	}
	t.dev = dev
	// The new optimizer first: if it fails (out of memory for the new
	// adapters' moments) the old one stays, with the plan AddAdapters
	// rolls back to.
	var opt ops.DeviceOptimizer
	if err := dev.Do(func() (err error) { opt, err = dev.NewOptimizer(t.params); return err }); err != nil {
		return fmt.Errorf("train: device state: %w", err)
	}
	if t.opt != nil {
		if err := dev.Do(t.opt.Close); err != nil {
			dev.Do(opt.Close)
			return err
		}
	}
	t.opt = opt
	t.behind = deviceBehind
	return nil
}

// closeDevice frees the device state: the optimizer's moments and the
// backend's copies of every Param the trainer's steps were bound with
// (also after a failed bind, when Options.Backend is a device backend).
func (t *Trainer) closeDevice() error {
	dev, ok := t.o.Backend.(ops.DeviceGradBackend)
	if !ok {
		return nil
	}
	err := dev.Do(func() error {
		var errs []error
		if t.opt != nil {
			errs = append(errs, t.opt.Close())
		}
		return errors.Join(append(errs, dev.ReleaseParams(t.allParams()))...)
	})
	t.opt = nil
	return err
}

// allParams lists every Param the trainer's stores made: the container's
// and the adapters' (bound or not).
func (t *Trainer) allParams() []*ops.Param {
	ps := append([]*ops.Param(nil), t.params...)
	seen := map[*ops.Param]bool{}
	for _, p := range ps {
		seen[p] = true
	}
	if t.store != nil {
		for _, p := range t.store.All() {
			if !seen[p] {
				ps, seen[p] = append(ps, p), true
			}
		}
	}
	if t.weights != nil {
		for _, p := range t.weights.vals {
			if !seen[p] {
				ps, seen[p] = append(ps, p), true
			}
		}
	}
	return ps
}

// OnDevice reports whether the training state lives on the backend
// (Options.Backend an ops.DeviceGradBackend whose steps all run there).
func (t *Trainer) OnDevice() bool { return t.opt != nil }

// SyncHost copies the Params' values and moments from the device into
// the host's (Params, checkpoints), when the device changed them; a
// no-op on the CPU.
func (t *Trainer) SyncHost() error {
	if t.opt == nil || t.behind != hostBehind {
		return nil
	}
	if err := t.dev.Do(func() error { return t.opt.Store(t.m, t.v) }); err != nil {
		return fmt.Errorf("train: copy the state from the device: %w", err)
	}
	t.behind = inSync
	return nil
}

// toDevice copies the host's Params and moments to the device when the
// host changed them.
func (t *Trainer) toDevice() error {
	if t.behind != deviceBehind {
		return nil
	}
	if err := t.dev.Do(func() error { return t.opt.Load(t.m, t.v) }); err != nil {
		return fmt.Errorf("train: copy the state to the device: %w", err)
	}
	t.behind = inSync
	return nil
}

// lossSumDevice is lossSum on the device: the plan forward on tensors,
// the cross-entropy (the logits' tensor becomes their gradient), and the
// plan backward, adding into the device's gradients. The values' tensors
// come from the backend's pool and go back at the end; a value's gradient
// goes back as soon as its producer's backward has run, as the CPU's
// backward recycles its buffers.
func (t *Trainer) lossSumDevice(c *ops.Call, targets []int32, grad bool, total int) (float64, error) {
	if err := t.toDevice(); err != nil {
		return 0, err
	}
	dev, rows := t.dev, c.Rows()
	var loss float64
	err := dev.Do(func() error {
		vals := make([]ops.Tensor, len(t.dims))
		grads := make([]ops.Tensor, len(t.dims))
		defer func() {
			for s, x := range vals {
				if x != nil && (grads[s] == nil || grads[s] != x) {
					dev.Release(x)
				}
			}
			for _, x := range grads {
				if x != nil {
					dev.Release(x)
				}
			}
		}()
		if err := dev.Begin(c); err != nil {
			return err
		}
		for _, ps := range t.plan {
			in := make([]ops.Tensor, len(ps.In))
			for i, s := range ps.In {
				in[i] = vals[s]
			}
			out, err := dev.Acquire(rows, ps.Dim)
			if err != nil {
				return err
			}
			vals[ps.Out] = out
			if err := ps.Step.(ops.DeviceGradStep).ForwardDevice(c, in, out); err != nil {
				return fmt.Errorf("node %q: %w", ps.Node.Name, err)
			}
		}
		// The loss of every row, summed in row order as crossEntropy does;
		// with grad the logits become their gradient in place.
		losses := reuse(&t.ceLoss, rows)
		if err := dev.CrossEntropy(vals[t.logits], targets, 1/float64(total), grad, losses); err != nil {
			return fmt.Errorf("train: cross-entropy: %w", err)
		}
		for _, l := range losses {
			loss += l
		}
		if !grad {
			return nil
		}
		grads[t.logits] = vals[t.logits]
		for i := len(t.plan) - 1; i >= 0; i-- {
			ps := t.plan[i]
			gout := grads[ps.Out]
			if gout == nil {
				continue // the output does not reach the loss
			}
			in := make([]ops.Tensor, len(ps.In))
			gin := make([]ops.Tensor, len(ps.In))
			for j, s := range ps.In {
				in[j] = vals[s]
				if grads[s] == nil {
					g, err := dev.Acquire(rows, t.dims[s])
					if err != nil {
						return err
					}
					grads[s] = g
					if err := dev.Zero(g); err != nil {
						return err
					}
				}
				gin[j] = grads[s]
			}
			if err := ps.Step.(ops.DeviceGradStep).BackwardDevice(c, in, vals[ps.Out], gout, gin); err != nil {
				return fmt.Errorf("node %q backward: %w", ps.Node.Name, err)
			}
			// Dead now (the logits' tensor is also their value, given back
			// with the values).
			if ps.Out != t.logits {
				dev.Release(gout)
			}
			grads[ps.Out] = nil
		}
		return nil
	})
	return loss, err
}
