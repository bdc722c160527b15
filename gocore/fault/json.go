package fault

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"unicode"
)

// DecodeJSON is how every door reads the JSON a caller sends (a daemon
// job's spec, a Python call's options, a session's state): one value,
// unknown fields refused, nothing after it. With numbers, numbers bound
// for an any become json.Number (the door turns them into int or float64
// as YAML gives them). Errors say in the caller's terms what is wrong
// (DescribeJSON), without Go type or struct names; they carry no kind:
// the caller wraps them with its own sentinel and names what it decoded.
func DecodeJSON(data []byte, v any, numbers bool) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if numbers {
		dec.UseNumber()
	}
	if err := dec.Decode(v); err != nil {
		return errors.New(DescribeJSON(err))
	}
	if dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// DescribeJSON turns an encoding/json decoding error into a message for
// users: the JSON field and what it must hold ("seed: got number -1, want
// an integer in [0, 2^64)"), without Go type or struct names.
func DescribeJSON(err error) string {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		field := jsonField(te.Field)
		got := te.Value
		if got == "" {
			got = "a value"
		}
		want := wantOf(te.Type)
		if field == "" {
			return fmt.Sprintf("got %s, want %s", got, want)
		}
		return fmt.Sprintf("%s: got %s, want %s", field, got, want)
	case errors.As(err, &se):
		return fmt.Sprintf("not valid JSON (at byte %d): %s", se.Offset, strings.TrimPrefix(se.Error(), "json: "))
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// jsonField keeps the JSON keys of a decoding error's field path: the
// names of embedded Go structs (which hold capital letters, unlike the
// doors' snake_case keys) are dropped.
func jsonField(path string) string {
	var keep []string
	for _, p := range strings.Split(path, ".") {
		if p == "" || strings.IndexFunc(p, unicode.IsUpper) >= 0 {
			continue
		}
		keep = append(keep, p)
	}
	return strings.Join(keep, ".")
}

// wantOf describes the JSON values a Go type accepts.
func wantOf(t reflect.Type) string {
	if t == nil {
		return "another type"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uint, reflect.Uintptr:
		return fmt.Sprintf("an integer in [0, 2^%d)", t.Bits())
	case reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Int:
		return fmt.Sprintf("an integer in [-2^%d, 2^%d)", t.Bits()-1, t.Bits()-1)
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "another type"
}
