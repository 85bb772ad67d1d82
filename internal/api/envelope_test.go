package api

import (
	"encoding/json"
	"reflect"
	"testing"
)

// The wire names are a contract with other builds of banger; pin them.
func TestEnvelopeWireNames(t *testing.T) {
	cases := []struct {
		v    any
		want string
	}{
		{Request{Version: 1, Method: "vm.list"}, `{"version":1,"method":"vm.list"}`},
		{Request{Version: 1, Method: "m", Params: json.RawMessage(`{"a":1}`), OpID: "x"},
			`{"version":1,"method":"m","params":{"a":1},"op_id":"x"}`},
		{Response{OpID: "o", Event: &Event{Stage: "disk", Message: "cloning", Current: 1, Total: 2}},
			`{"op_id":"o","event":{"stage":"disk","message":"cloning","current":1,"total":2}}`},
		{Response{OpID: "o", Event: &Event{Stream: StreamStdout, Data: []byte("hi\n")}},
			`{"op_id":"o","event":{"stream":"stdout","data":"aGkK"}}`},
		{Response{OpID: "o", Done: true, Result: json.RawMessage(`[]`)}, `{"op_id":"o","done":true,"result":[]}`},
		{Response{OpID: "o", Done: true, Error: &Error{Code: CodeNotFound, Message: "vm \"x\": not found", OpID: "o"}},
			`{"op_id":"o","done":true,"error":{"code":"not_found","message":"vm \"x\": not found","op_id":"o"}}`},
		{Input{Stdin: []byte("ls\n")}, `{"stdin":"bHMK"}`},
		{Input{EOF: true}, `{"eof":true}`},
		{Input{Resize: &Winsize{Cols: 80, Rows: 24}}, `{"resize":{"cols":80,"rows":24}}`},
		{Input{Signal: "INT"}, `{"signal":"INT"}`},
	}
	for _, c := range cases {
		b, err := json.Marshal(c.v)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != c.want {
			t.Errorf("marshal %#v\n got %s\nwant %s", c.v, b, c.want)
		}
		back := reflect.New(reflect.TypeOf(c.v))
		if err := json.Unmarshal(b, back.Interface()); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back.Elem().Interface(), c.v) {
			t.Errorf("round trip of %s: got %#v", b, back.Elem().Interface())
		}
	}
}
