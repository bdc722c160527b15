package fault

import (
	"encoding/json"
	"testing"
)

func TestDecodeJSON(t *testing.T) {
	type innerSpec struct {
		Seed uint64 `json:"seed"`
	}
	type spec struct {
		Name      string    `json:"name"`
		Xs        []float64 `json:"xs"`
		Any       any       `json:"any"`
		innerSpec           // embedded: its Go name must not appear in messages
	}
	for _, tc := range []struct {
		in, want string
		numbers  bool
	}{
		{in: `{"name": "a"}`},
		{in: `{"bogus": 1}`, want: `unknown field "bogus"`},
		{in: `{"seed": -1}`, want: `seed: got number -1, want an integer in [0, 2^64)`},
		{in: `{"name": 3}`, want: `name: got number, want a string`},
		{in: `{"xs": {}}`, want: `xs: got object, want a list`},
		{in: `{"name": "a"} {"name": "b"}`, want: `trailing data after the JSON value`},
		{in: `{"name": `, want: `unexpected EOF`},
		{in: `{"name" 1}`, want: `not valid JSON (at byte 9): invalid character '1' after object key`},
	} {
		var v spec
		err := DecodeJSON([]byte(tc.in), &v, tc.numbers)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("DecodeJSON(%s) error %q, want %q", tc.in, got, tc.want)
		}
	}
	// numbers: a number bound for an any stays exact, as json.Number.
	for _, numbers := range []bool{false, true} {
		var v spec
		if err := DecodeJSON([]byte(`{"any": 18446744073709551615}`), &v, numbers); err != nil {
			t.Fatal(err)
		}
		if _, isNumber := v.Any.(json.Number); isNumber != numbers {
			t.Errorf("numbers=%v: any holds %T", numbers, v.Any)
		}
	}
}
