package vm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// step is one named stage of a pipeline. A step that acquires a resource owns
// its undo; undo runs even when do itself failed half way, so it must tolerate
// a partially acquired resource.
type step struct {
	name string
	do   func(ctx context.Context) error
	undo func(ctx context.Context) error
}

// undoTimeout bounds the rollback, which runs on an uncancelled context so a
// client hanging up mid-create cannot leak what was already acquired.
const undoTimeout = 60 * time.Second

// runSteps runs steps in order, reporting each name. On failure the undos of
// the failing step and of every step that ran before it run in reverse order;
// their errors are joined to the root cause, never in place of it.
func runSteps(ctx context.Context, log *slog.Logger, steps []step, progress func(stage string)) error {
	for i, st := range steps {
		if progress != nil {
			progress(st.name)
		}
		start := time.Now()
		err := ctx.Err()
		if err == nil {
			err = st.do(ctx)
		}
		if err == nil {
			log.DebugContext(ctx, "step done", "step", st.name, "ms", time.Since(start).Milliseconds())
			continue
		}
		log.WarnContext(ctx, "step failed, rolling back", "step", st.name, "err", err)
		errs := []error{fmt.Errorf("%s: %w", st.name, err)}
		return errors.Join(append(errs, undoSteps(ctx, log, steps[:i+1])...)...)
	}
	return nil
}

// undoSteps runs the undos of steps in reverse order on an uncancelled
// context with a timeout, and returns their failures.
func undoSteps(ctx context.Context, log *slog.Logger, steps []step) []error {
	var errs []error
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	for j := len(steps) - 1; j >= 0; j-- {
		if steps[j].undo == nil {
			continue
		}
		if uerr := steps[j].undo(uctx); uerr != nil {
			log.ErrorContext(ctx, "undo failed", "step", steps[j].name, "err", uerr)
			errs = append(errs, &undoError{step: steps[j].name, err: uerr})
		}
	}
	return errs
}

// undoError is a failed undo: what it should have released may be left.
type undoError struct {
	step string
	err  error
}

func (e *undoError) Error() string { return fmt.Sprintf("undo %s: %v", e.step, e.err) }
func (e *undoError) Unwrap() error { return e.err }

// rolledBack reports whether a pipeline's error says every undo succeeded.
func rolledBack(err error) bool {
	var ue *undoError
	return !errors.As(err, &ue)
}

// stepVMMStarted is the point inside vmm_launch that Deps.AfterStep also
// reports: the VMM runs and handles.json names it, the row is not running yet.
const stepVMMStarted = "vmm_launch:started"

// hookSteps wraps each step so that Deps.AfterStep runs once its do has
// succeeded (failure injection: a daemon killed right after a named step).
func (s *Service) hookSteps(steps []step) []step {
	if s.d.AfterStep == nil {
		return steps
	}
	out := make([]step, len(steps))
	for i, st := range steps {
		do := st.do
		st.do = func(ctx context.Context) error {
			if err := do(ctx); err != nil {
				return err
			}
			s.d.AfterStep(st.name)
			return nil
		}
		out[i] = st
	}
	return out
}
