package train

import "github.com/slopeml/slope/ops"

// Memory is the trainer's memory by kind, in bytes. Values, Grads,
// Moments and NMMeta are the training state (what the SLoPe paper counts
// as weights, gradients and optimizer state): float32 master values (kept
// values only for N:M weights), their gradients (the same lengths), the
// AdamW moments (two float32 per value) and the N:M weights' metadata
// (their packed indices and transpose masks, as the container stores
// them: for 2:4, 3 bits per kept value). Kernels is what SlopeLinear
// steps hold besides, between steps (ops.CacheBytes: the indices of the
// prepared weights and W_dpᵀ's refill plans; the scratch that every step
// shares, dense panels included, is not counted, so a dense model reports
// 0); Activations the forward values, their gradients and the loss
// gradient kept between steps.
type Memory struct {
	Values, Grads, Moments, NMMeta int64
	Kernels, Activations           int64
}

// State is the training state: Values + Grads + Moments + NMMeta.
func (m Memory) State() int64 { return m.Values + m.Grads + m.Moments + m.NMMeta }

// Memory measures the trainer's buffers now (Kernels and Activations
// grow to their working size during the first Step).
func (t *Trainer) Memory() Memory {
	var m Memory
	for _, p := range t.params {
		m.Values += 4 * int64(len(p.Value))
		m.Grads += 4 * int64(len(p.Grad))
		if p.NM != nil {
			m.NMMeta += int64(len(p.NM.Indices) + len(p.NM.TMask))
		}
	}
	m.Moments = t.OptimizerBytes()
	for _, ps := range t.plan {
		m.Kernels += ops.CacheBytes(ps.Step)
	}
	for _, bufs := range [][][]float32{t.acts, t.grads} {
		for _, b := range bufs {
			m.Activations += 4 * int64(cap(b))
		}
	}
	m.Activations += 4 * int64(cap(t.glogits))
	return m
}
