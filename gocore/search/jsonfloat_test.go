package search

import (
	"encoding/json"
	"math"
	"testing"
)

func TestJSONFloat(t *testing.T) {
	for _, c := range []struct {
		v    float64
		text string
	}{
		{0, "0"}, {1.5, "1.5"}, {-2e-300, "-2e-300"}, {0.1, "0.1"},
		{math.MaxFloat64, "1.7976931348623157e+308"},
		{math.Inf(1), `"+Inf"`}, {math.Inf(-1), `"-Inf"`}, {math.NaN(), `"NaN"`},
	} {
		b, err := json.Marshal(JSONFloat(c.v))
		if err != nil || string(b) != c.text {
			t.Errorf("marshal %v: %s, %v; want %s", c.v, b, err, c.text)
		}
		var back JSONFloat
		if err := json.Unmarshal(b, &back); err != nil {
			t.Errorf("unmarshal %s: %v", b, err)
		}
		if g := float64(back); g != c.v && !(math.IsNaN(g) && math.IsNaN(c.v)) {
			t.Errorf("round trip %v -> %v", c.v, g)
		}
	}
	var v JSONFloat
	if err := json.Unmarshal([]byte(`"Inf"`), &v); err != nil || !math.IsInf(float64(v), 1) {
		t.Errorf(`"Inf": %v %v`, v, err)
	}
	for _, bad := range []string{`"1.5"`, `"inf"`, `true`, `Infinity`, `NaN`, `"`, `[1]`} {
		if err := json.Unmarshal([]byte(bad), &v); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

func FuzzJSONFloat(f *testing.F) {
	for _, s := range []string{"0", "-1.25e-7", `"NaN"`, `"+Inf"`, `"-Inf"`, `"x"`, "1e999", "{}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var v JSONFloat
		if err := v.UnmarshalJSON(b); err != nil {
			return
		}
		out, err := v.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		var w JSONFloat
		if err := w.UnmarshalJSON(out); err != nil {
			t.Fatalf("re-parse %s: %v", out, err)
		}
		if math.Float64bits(float64(w)) != math.Float64bits(float64(v)) && !(math.IsNaN(float64(v)) && math.IsNaN(float64(w))) {
			t.Fatalf("round trip %v -> %s -> %v", v, out, w)
		}
	})
}

func TestScoresDecoding(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []float64 // NaN compared as NaN
		err  bool
	}{
		{in: `[1.5, -2, 0]`, want: []float64{1.5, -2, 0}},
		{in: `[null, 3]`, want: []float64{math.NaN(), 3}},
		{in: `["NaN", "-Inf", "+Inf", "Inf"]`, want: []float64{math.NaN(), math.Inf(-1), math.Inf(1), math.Inf(1)}},
		{in: `[]`, want: []float64{}},
		{in: `["one"]`, err: true},
		{in: `{"a": 1}`, err: true},
		{in: `[true]`, err: true},
	} {
		var s Scores
		err := json.Unmarshal([]byte(tc.in), &s)
		if (err != nil) != tc.err {
			t.Fatalf("%s: error %v, want error %v", tc.in, err, tc.err)
		}
		if tc.err {
			continue
		}
		if len(s) != len(tc.want) {
			t.Fatalf("%s: %v, want %v", tc.in, s, tc.want)
		}
		for i, w := range tc.want {
			if g := s[i]; g != w && !(math.IsNaN(g) && math.IsNaN(w)) {
				t.Errorf("%s: [%d] = %v, want %v", tc.in, i, g, w)
			}
		}
	}
}
