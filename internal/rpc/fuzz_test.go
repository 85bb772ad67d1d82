package rpc

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"version":1,"method":"vm.list"}`,
		`{"version":1,"method":"vm.create","params":{"name":"a","vcpu":2},"op_id":"abc"}`,
		`{"version":1,"method":"vm.create","params":null}`,
		`{"version":2,"method":"vm.list"}`,
		`{"version":1,"method":"vm.list","x":1}`,
		`{"version":1,"method":"vm.list"} trailing`,
		`{"version":1e0,"method":"\u0000"}`,
		`[]`, `null`, `"str"`, ``, `{`, `{"version":-1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := decodeRequest(b)
		if err != nil {
			if !errors.Is(err, api.ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		if req.Version != api.Version || !validMethod(req.Method) {
			t.Fatalf("accepted invalid request %+v", req)
		}
		// Anything accepted re-encodes to something accepted and equal.
		again, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		req2, err := decodeRequest(again)
		if err != nil {
			t.Fatalf("re-decode of %s: %v", again, err)
		}
		if req.Version != req2.Version || req.Method != req2.Method || req.OpID != req2.OpID ||
			!reflect.DeepEqual(compact(t, req.Params), compact(t, req2.Params)) {
			t.Fatalf("round trip changed %+v to %+v", req, req2)
		}
	})
}

func compact(t *testing.T, m json.RawMessage) string {
	if len(m) == 0 {
		return ""
	}
	var v any
	if err := json.Unmarshal(m, &v); err != nil {
		t.Fatalf("accepted params that are not JSON: %q", m)
	}
	b, _ := json.Marshal(v)
	return string(b)
}
