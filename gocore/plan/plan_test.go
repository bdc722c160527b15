package plan

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/merge"
)

// in builds an input from "name:dtype:d0xd1" specs ("" dims: a scalar).
func in(where string, specs ...string) Input {
	i := Input{Where: where}
	for _, s := range specs {
		parts := strings.Split(s, ":")
		t := Tensor{Name: parts[0], DType: parts[1], Shape: []int64{}}
		if parts[2] != "" {
			for _, d := range strings.Split(parts[2], "x") {
				var n int64
				fmt.Sscan(d, &n)
				t.Shape = append(t.Shape, n)
			}
		}
		i.Tensors = append(i.Tensors, t)
	}
	return i
}

var baseSpecs = []string{"z.weight:F32:4x2", "a.weight:BF16:2x4", "ids:I64:1x6", "mask:BOOL:3", "norm:F16:4"}

// summary writes a plan's entries as "name action dtype [T] [V]" lines.
func summary(p *Plan) []string {
	var out []string
	for _, e := range p.Entries {
		s := e.Name + " " + e.Action.String() + " " + e.DType
		if e.Transposed {
			s += " T"
		}
		if e.Verify {
			s += " V"
		}
		if e.Action == Merge {
			s += fmt.Sprintf(" #%d", e.Merged)
		}
		out = append(out, s)
	}
	return out
}

func TestMake(t *testing.T) {
	same := in("", baseSpecs...)
	cases := []struct {
		name    string
		base    []string // nil: baseSpecs
		models  []Input
		opt     Options
		entries []string // nil: not checked
		notes   []string // substrings
		errs    []string // substrings, one per problem, in order
		kinds   []Kind
	}{
		{name: "name order; integer tensors copied and verified", models: []Input{same, same},
			entries: []string{"a.weight merge BF16 #0", "ids copy I64 V", "mask copy BOOL V", "norm merge F16 #1", "z.weight merge F32 #2"}},
		{name: "output dtype: merged tensors only", models: []Input{same}, opt: Options{OutDType: "BF16"},
			entries: []string{"a.weight merge BF16 #0", "ids copy I64 V", "mask copy BOOL V", "norm merge BF16 #1", "z.weight merge BF16 #2"}},
		{name: "models may store floats in another float dtype", models: []Input{in("", "z.weight:F16:4x2", "a.weight:F32:2x4", "ids:I64:1x6", "mask:BOOL:3", "norm:BF16:4")},
			entries: []string{"a.weight merge BF16 #0", "ids copy I64 V", "mask copy BOOL V", "norm merge F16 #1", "z.weight merge F32 #2"}},
		{name: "transposed by pattern, 2-D only", models: []Input{same}, opt: Options{Transposed: []string{"weight", "norm"}},
			entries: []string{"a.weight merge BF16 T #0", "ids copy I64 V", "mask copy BOOL V", "norm merge F16 #1", "z.weight merge F32 T #2"}},
		{name: "transposed by model type, noted", base: []string{"h.0.mlp.c_fc.weight:F32:2x3"}, models: []Input{in("", "h.0.mlp.c_fc.weight:F32:2x3")},
			opt:     Options{ModelType: "gpt2"},
			entries: []string{"h.0.mlp.c_fc.weight merge F32 T #0"}, notes: []string{"model_type gpt2: attn.c_attn.weight"}},
		{name: "missing, grouped per model", models: []Input{same, in("/m1", "ids:I64:1x6")},
			errs: []string{`tensor "a.weight" is missing from model 1 (/m1) (and 3 more)`}, kinds: []Kind{Missing}},
		{name: "missing, the door's option suggested", models: []Input{in("", "a.weight:BF16:2x4")}, opt: Options{MissingOption: "--allow-missing"},
			errs: []string{`tensor "ids" is missing from model 0 (and 3 more); --allow-missing keeps the base's`}},
		{name: "allow missing keeps the base's, noted, converted", models: []Input{same, in("/m1", "a.weight:BF16:2x4", "ids:I64:1x6", "norm:F16:4")},
			opt:     Options{AllowMissing: true, OutDType: "F32"},
			entries: []string{"a.weight merge F32 #0", "ids copy I64 V", "mask copy BOOL V", "norm merge F32 #1", "z.weight copy F32"},
			notes:   []string{`tensor "mask" is missing from model 1 (/m1): the base's tensor is kept`, `tensor "z.weight" is missing from model 1 (/m1): the base's tensor is kept`}},
		{name: "extra tensors, grouped", models: []Input{in("/m0", append(slices.Clone(baseSpecs), "x:F32:1", "lm_head:F32:1")...)},
			errs: []string{`tensor "lm_head" of model 0 (/m0) is not in the base (and 1 more)`}, kinds: []Kind{Extra}},
		{name: "a task head's prefix added to the model's names (issue 18, item 9)", base: []string{"enc.0.w:F32:2", "enc.1.w:F32:2", "pool:F32:2"},
			models: []Input{in("/m0", "bert.enc.0.w:F32:2", "bert.enc.1.w:F32:2", "bert.pool:F32:2", "classifier.w:F32:2")},
			errs: []string{`model 0 (/m0)'s names look like the base's with the prefix "bert." added ("bert.enc.0.w")`,
				`tensor "bert.enc.0.w" of model 0 (/m0) is not in the base (and 3 more)`, `tensor "enc.0.w" is missing from model 0 (/m0) (and 2 more)`},
			kinds: []Kind{Prefix, Extra, Missing}},
		{name: "the base's prefix missing from the model's names", base: []string{"bert.enc.0.w:F32:2", "bert.enc.1.w:F32:2"},
			models: []Input{in("", "enc.0.w:F32:2", "enc.1.w:F32:2")},
			errs: []string{`model 0's names look like the base's without the prefix "bert." ("enc.0.w" for "bert.enc.0.w")`,
				`tensor "bert.enc.0.w" is missing from model 0 (and 1 more)`, `tensor "enc.0.w" of model 0 is not in the base (and 1 more)`},
			kinds: []Kind{Prefix, Missing, Extra}},
		{name: "unrelated names: no prefix hint", base: []string{"a:F32:2", "b:F32:2"}, models: []Input{in("", "x.c:F32:2", "x.d:F32:2")},
			errs:  []string{`tensor "a" is missing from model 0 (and 1 more)`, `tensor "x.c" of model 0 is not in the base (and 1 more)`},
			kinds: []Kind{Missing, Extra}},
		{name: "shape, with files", models: []Input{same, {Where: "/m1", Tensors: []Tensor{{Name: "z.weight", DType: "F32", Shape: []int64{2, 4}, File: "/m1/s2.safetensors"}}}},
			opt:  Options{AllowMissing: true},
			errs: []string{`tensor "z.weight" has shape [2 4] in model 1 (/m1/s2.safetensors) but [4 2] in the base`}, kinds: []Kind{Shape}},
		{name: "integer tensor of another shape", models: []Input{in("", "z.weight:F32:4x2", "a.weight:BF16:2x4", "ids:I64:6", "mask:BOOL:3", "norm:F16:4")},
			errs: []string{`tensor "ids" has shape [6] in model 0 but [1 6] in the base`}},
		{name: "integer tensor of another dtype", models: []Input{in("", "z.weight:F32:4x2", "a.weight:BF16:2x4", "ids:I32:1x6", "mask:F32:3", "norm:F16:4")},
			errs: []string{`tensor "ids" has dtype I32 in model 0 but I64 in the base; integer and boolean tensors are copied`,
				`tensor "mask" has dtype F32 in model 0 but BOOL in the base`}, kinds: []Kind{DType, DType}},
		{name: "float tensor stored as int or F64", models: []Input{in("", "z.weight:I32:4x2", "a.weight:F64:2x4", "ids:I64:1x6", "mask:BOOL:3", "norm:F16:4")},
			errs: []string{`tensor "a.weight" has dtype F64 in model 0 but BF16 in the base; a merged tensor must be F32, F16 or BF16`,
				`tensor "z.weight" has dtype I32 in model 0 but F32 in the base`}},
		{name: "unsupported base dtype, once", base: []string{"w:F64:2"}, models: []Input{in("", "w:F64:2"), in("", "w:F64:2")},
			errs: []string{`tensor "w" has dtype F64 in the base; npsfuse merges F32, F16 and BF16 tensors`}, kinds: []Kind{DType}},
		{name: "no base: model 0 lays out", base: []string{"w:F32:9"}, models: []Input{in("/m0", "w:F32:2"), in("/m1", "w:F32:3", "v:F32:1")}, opt: Options{NoBase: true},
			errs: []string{`tensor "v" of model 1 (/m1) is not in model 0`, `tensor "w" has shape [3] in model 1 (/m1) but [2] in model 0 (/m0)`}},
		{name: "problems sorted by tensor, then model", base: []string{"b:F32:1", "a:F32:1"},
			models: []Input{in("", "b:F32:1", "a:F32:2"), in("", "b:F32:2", "a:F32:1"), in("", "b:F32:1", "a:F32:3")},
			errs:   []string{`tensor "a" has shape [2] in model 0`, `tensor "a" has shape [3] in model 2`, `tensor "b" has shape [2] in model 1`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := same
			if c.base != nil {
				base = in("", c.base...)
			}
			p, err := Make(base, c.models, c.opt)
			if err != nil {
				t.Fatal(err)
			}
			if c.entries != nil && !slices.Equal(summary(p), c.entries) {
				t.Errorf("entries\n%q\nwant\n%q", summary(p), c.entries)
			}
			for _, n := range c.notes {
				if !slices.ContainsFunc(p.Notes, func(s string) bool { return strings.Contains(s, n) }) {
					t.Errorf("no note %q in %q", n, p.Notes)
				}
			}
			if len(p.Problems) != len(c.errs) {
				t.Fatalf("%d problems, want %d:\n%v", len(p.Problems), len(c.errs), p.Err())
			}
			for i, w := range c.errs {
				if !strings.Contains(p.Problems[i].Text, w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, p.Problems[i].Text, w)
				}
				if i < len(c.kinds) && p.Problems[i].Kind != c.kinds[i] {
					t.Errorf("problem %d kind %s, want %s", i, p.Problems[i].Kind, c.kinds[i])
				}
			}
			if err := p.Err(); (err != nil) != (len(c.errs) > 0) || (err != nil && !errors.Is(err, merge.ErrInput)) {
				t.Errorf("Err() = %v", err)
			}
		})
	}
}

// Differ reports an integer tensor's values, naming the model's file.
func TestDiffer(t *testing.T) {
	m := in("/m1", baseSpecs...)
	m.Tensors[2].File = "/m1/b.safetensors"
	p, err := Make(in("", baseSpecs...), []Input{in("", baseSpecs...), m}, Options{})
	if err != nil || p.Err() != nil {
		t.Fatal(err, p.Err())
	}
	p.Differ("mask", 0)
	p.Differ("ids", 1)
	want := "invalid merge input: the models do not fit together (2 problems):\n" +
		`  - tensor "ids" (I64) differs between the base and model 1 (/m1/b.safetensors); integer and boolean tensors are copied from the base, so every model must hold the same dtype, shape and values` + "\n" +
		`  - tensor "mask" (BOOL) differs between the base and model 0; integer and boolean tensors are copied from the base, so every model must hold the same dtype, shape and values`
	if got := p.Err().Error(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// At most MaxListed problems are listed, then a count of the rest.
func TestMessageCaps(t *testing.T) {
	var b, m []string
	for i := range 25 {
		b = append(b, fmt.Sprintf("t%02d:F32:2", i))
		m = append(m, fmt.Sprintf("t%02d:F32:3", i))
	}
	p, err := Make(in("", b...), []Input{in("", m...)}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	msg := p.Message()
	if !strings.HasPrefix(msg, "the models do not fit together (25 problems):") || !strings.HasSuffix(msg, "… and 5 more") ||
		strings.Count(msg, "\n  - ") != MaxListed+1 || !strings.Contains(msg, `"t19"`) || strings.Contains(msg, `"t20"`) {
		t.Errorf("message:\n%s", msg)
	}
}

// Bad options are errors, not problems.
func TestBadOptions(t *testing.T) {
	b := in("", "w:F32:2")
	for _, c := range []struct {
		opt    Options
		models []Input
		want   string
	}{
		{Options{Transposed: []string{"[a"}}, []Input{b}, `transposed: bad pattern "[a"`},
		{Options{OutDType: "I64"}, []Input{b}, "output dtype I64"},
		{Options{}, nil, "no models"},
	} {
		if _, err := Make(b, c.models, c.opt); err == nil || !errors.Is(err, merge.ErrInput) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", c.opt, err, c.want)
		}
	}
}

// The base's order is kept for doors that write in it.
func TestInBaseOrder(t *testing.T) {
	b := in("", baseSpecs...)
	p, err := Make(b, []Input{b}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range p.InBaseOrder() {
		got = append(got, e.Name)
	}
	if want := []string{"z.weight", "a.weight", "ids", "mask", "norm"}; !slices.Equal(got, want) {
		t.Errorf("base order %q, want %q", got, want)
	}
	if n := len(p.Merged()); n != 3 {
		t.Errorf("%d merged, want 3", n)
	}
}

// Verify asks about integer tensors only, in models that hold them, and
// reports what differs; an error of the comparison stops it.
func TestVerify(t *testing.T) {
	lacking := in("/m1", "z.weight:F32:4x2", "a.weight:BF16:2x4", "ids:I64:1x6", "norm:F16:4")
	p, err := Make(in("", baseSpecs...), []Input{in("", baseSpecs...), lacking}, Options{AllowMissing: true})
	if err != nil {
		t.Fatal(err)
	}
	var asked []string
	err = p.Verify(func(name string, model int) (bool, error) {
		asked = append(asked, fmt.Sprint(name, " ", model))
		return !(name == "ids" && model == 1), nil
	})
	if want := []string{"ids 0", "ids 1", "mask 0"}; err != nil || !slices.Equal(asked, want) {
		t.Errorf("asked %q (%v), want %q", asked, err, want)
	}
	if len(p.Problems) != 1 || p.Problems[0].Kind != Values || !strings.Contains(p.Problems[0].Text, `"ids" (I64) differs between the base and model 1 (/m1)`) {
		t.Errorf("problems %+v", p.Problems)
	}
	boom := errors.New("read failed")
	if err := p.Verify(func(string, int) (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Errorf("Verify error %v, want %v", err, boom)
	}
}
