package search

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// JSONFloat is a float64 whose JSON form also represents the non-finite
// values that plain encoding/json rejects: finite values are JSON numbers
// (shortest form that round-trips exactly), NaN is the string "NaN", +Inf is
// "+Inf" and −Inf is "-Inf". Decoding also accepts "Inf" for +Inf. It is used
// for fitness values in the state structs, where failed evaluations are
// non-finite.
type JSONFloat float64

// MarshalJSON implements json.Marshaler.
func (f JSONFloat) MarshalJSON() ([]byte, error) {
	v := float64(f)
	switch {
	case math.IsNaN(v):
		return []byte(`"NaN"`), nil
	case math.IsInf(v, 1):
		return []byte(`"+Inf"`), nil
	case math.IsInf(v, -1):
		return []byte(`"-Inf"`), nil
	}
	return strconv.AppendFloat(nil, v, 'g', -1, 64), nil
}

// UnmarshalJSON implements json.Unmarshaler. It accepts a JSON number or one
// of the strings "NaN", "Inf", "+Inf", "-Inf"; anything else is an error.
func (f *JSONFloat) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("search: JSONFloat: %w", err)
		}
		switch s {
		case "NaN":
			*f = JSONFloat(math.NaN())
		case "Inf", "+Inf":
			*f = JSONFloat(math.Inf(1))
		case "-Inf":
			*f = JSONFloat(math.Inf(-1))
		default:
			return fmt.Errorf("search: JSONFloat: unknown string %q", s)
		}
		return nil
	}
	var v float64
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("search: JSONFloat: %w", err)
	}
	*f = JSONFloat(v)
	return nil
}

func toJSONFloats(x []float64) []JSONFloat {
	if x == nil {
		return nil
	}
	out := make([]JSONFloat, len(x))
	for i, v := range x {
		out[i] = JSONFloat(v)
	}
	return out
}

func fromJSONFloats(x []JSONFloat) []float64 {
	if x == nil {
		return nil
	}
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

// Scores are told scores as every door receives them in JSON (pybind's
// OptTell and NPSSessionTell, the daemon's tell): a list of numbers, the
// strings JSONFloat reads ("NaN", "-Inf", …) and null, which marks a failed
// evaluation and becomes NaN. The engine ranks every non-finite score as a
// failed evaluation.
type Scores []float64

// UnmarshalJSON implements json.Unmarshaler.
func (s *Scores) UnmarshalJSON(b []byte) error {
	var raw []*JSONFloat
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*s = make(Scores, len(raw))
	for i, v := range raw {
		(*s)[i] = math.NaN()
		if v != nil {
			(*s)[i] = float64(*v)
		}
	}
	return nil
}
