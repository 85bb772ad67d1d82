package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestDispatch(t *testing.T) {
	cases := []struct {
		args     []string
		code     int
		out, err string
	}{
		{[]string{"version"}, 0, "banger-agent dev\n", ""},
		{nil, 2, "", "usage: banger-agent <command>"},
		{[]string{"bogus"}, 2, "", `unknown command "bogus"`},
		// Not PID 1 in a test: init must refuse rather than switch the host's root.
		{[]string{"init"}, 2, "", "not PID 1"},
		{[]string{"init", "--forc"}, 2, "", "not PID 1"},
		{[]string{"serve", "extra"}, 2, "", "usage: banger-agent serve"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := dispatch(c.args, &out, &errb)
		if code != c.code || out.String() != c.out || !strings.Contains(errb.String(), c.err) {
			t.Errorf("%v: code %d out %q err %q", c.args, code, out.String(), errb.String())
		}
	}
}
