package cli

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/termsafe"
)

// stageView renders named stages of a long daemon operation: a spinner on a
// terminal, one line per stage otherwise (logs, CI).
type stageView struct {
	w       io.Writer
	bar     *progressbar.ProgressBar
	start   time.Time
	last    string
	lastAt  time.Time
	enabled bool
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (a *app) newStageView(title string) *stageView {
	sv := &stageView{w: a.stderr, start: time.Now(), lastAt: time.Now(), enabled: !a.json || true}
	if isTerminal(a.stderr) {
		sv.bar = progressbar.NewOptions(-1, progressbar.OptionSetWriter(a.stderr),
			progressbar.OptionSetDescription(title), progressbar.OptionSpinnerType(14),
			progressbar.OptionClearOnFinish(), progressbar.OptionShowElapsedTimeOnFinish())
	}
	return sv
}

func (sv *stageView) event(ev api.Event) {
	if ev.Stage == "" && ev.Message == "" {
		return
	}
	now := time.Now()
	if !ev.At.IsZero() {
		// A stage replayed to a client that attached later (vm wait):
		// timed from when it began in the daemon (same host, same clock).
		now = ev.At
		if sv.last == "" && now.Before(sv.start) {
			sv.start = now
		}
	}
	if ev.Stage != sv.last && sv.last != "" && sv.bar == nil {
		fmt.Fprintf(sv.w, "    %s done (%.1fs)\n", sv.last, now.Sub(sv.lastAt).Seconds())
	}
	if ev.Stage != sv.last {
		sv.last, sv.lastAt = ev.Stage, now
	}
	desc := ev.Stage
	if ev.Message != "" {
		desc += ": " + ev.Message
	}
	desc = termsafe.Field(desc) // messages may quote a guest (first-boot output)
	if sv.bar != nil {
		sv.bar.Describe(fmt.Sprintf("[%5.1fs] %s", now.Sub(sv.start).Seconds(), desc))
		_ = sv.bar.Add(1)
		return
	}
	fmt.Fprintf(sv.w, "==> %s\n", desc)
}

func (sv *stageView) done() {
	if sv.bar != nil {
		_ = sv.bar.Finish()
		_ = sv.bar.Clear()
		fmt.Fprintf(sv.w, "done in %.1fs\n", time.Since(sv.start).Seconds())
		return
	}
	if sv.last != "" {
		fmt.Fprintf(sv.w, "    %s done (%.1fs); total %.1fs\n", sv.last, time.Since(sv.lastAt).Seconds(), time.Since(sv.start).Seconds())
	}
}
