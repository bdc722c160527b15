package safetensors

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"unicode/utf8"
)

// MaxHeaderSize is the largest header, in bytes, that Open, OpenBytes and
// NewWriter accept: 100 MB, the reference implementation's limit.
const MaxHeaderSize = 100 * 1000 * 1000

// metadataKey is the reserved header key holding the string-to-string map.
const metadataKey = "__metadata__"

// jsonMember is one key/value pair of a JSON object, in document order.
type jsonMember struct {
	key string
	val json.RawMessage
}

var errNotObject = errors.New("not a JSON object")

// jsonObject splits raw, which must be exactly one JSON object optionally
// surrounded by white space, into its members in document order. Duplicate
// keys are returned as found; the caller decides. O(len(raw)).
func jsonObject(raw []byte) ([]jsonMember, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if err == io.EOF {
		return nil, errors.New("empty JSON document")
	}
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errNotObject
	}
	var out []jsonMember
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("object key %v is not a string", tok)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		out = append(out, jsonMember{key, v})
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("data after the JSON object at byte %d", dec.InputOffset())
	}
	return out, nil
}

// jsonKind names the JSON type of a valid raw value, for error messages.
func jsonKind(raw []byte) string {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}

// jsonString decodes raw if it is a JSON string.
func jsonString(raw []byte) (string, bool) {
	if jsonKind(raw) != "a string" {
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

type uintStatus int

const (
	uintOK       uintStatus = iota
	uintNotInt              // not a JSON integer literal (float, exponent, other type)
	uintNegative            // an integer below zero
	uintTooLarge            // an integer above 2^64-1
)

// jsonUint parses a JSON integer literal (-?(0|[1-9][0-9]*)) into a uint64.
// Every literal with a minus sign, "-0" included, is negative: the reference
// parser reads "-0" as a float and refuses it.
func jsonUint(raw []byte) (uint64, uintStatus) {
	s := string(bytes.TrimSpace(raw))
	neg := false
	digits := s
	if len(digits) > 0 && digits[0] == '-' {
		neg, digits = true, digits[1:]
	}
	if digits == "" {
		return 0, uintNotInt
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, uintNotInt
		}
	}
	if neg {
		return 0, uintNegative // including -0, which the reference refuses too
	}
	v, err := strconv.ParseUint(digits, 10, 64)
	if err != nil {
		return 0, uintTooLarge
	}
	return v, uintOK
}

// jsonArray decodes raw if it is a JSON array.
func jsonArray(raw []byte) ([]json.RawMessage, bool) {
	if jsonKind(raw) != "an array" {
		return nil, false
	}
	var a []json.RawMessage
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, false
	}
	return a, true
}

// header is a parsed and validated safetensors header.
type header struct {
	tensors  map[string]*TensorInfo
	names    []string // sorted
	metadata map[string]string
}

// parseHeader parses the JSON header hdr of the file at path and validates it
// against a data section of dataSize bytes. All errors are *Error. Cost
// O(len(hdr) + T log T) for T tensors.
func parseHeader(path string, hdr []byte, dataSize int64) (*header, error) {
	if !utf8.Valid(hdr) {
		return nil, fileErr(path, ErrBadHeader, "header is not valid UTF-8", nil)
	}
	members, err := jsonObject(hdr)
	if err != nil {
		if err == errNotObject {
			return nil, fileErr(path, ErrBadHeader, "header is "+jsonKind(hdr)+", not a JSON object", nil)
		}
		return nil, fileErr(path, ErrBadHeader, "header is not valid JSON", err)
	}
	h := &header{tensors: make(map[string]*TensorInfo, len(members))}
	seenMeta := false
	for _, m := range members {
		if m.key == metadataKey {
			if seenMeta {
				return nil, fileErr(path, ErrBadHeader, `"__metadata__" occurs twice`, nil)
			}
			seenMeta = true
			meta, err := parseMetadata(path, m.val)
			if err != nil {
				return nil, err
			}
			h.metadata = meta
			continue
		}
		if _, dup := h.tensors[m.key]; dup {
			return nil, tensorErr(path, m.key, ErrDuplicate, "name occurs twice in the header", nil)
		}
		ti, err := parseTensorInfo(path, m.key, m.val, dataSize)
		if err != nil {
			return nil, err
		}
		h.tensors[m.key] = ti
		h.names = append(h.names, m.key)
	}
	if err := checkTiling(path, h.tensors, dataSize); err != nil {
		return nil, err
	}
	slices.Sort(h.names)
	return h, nil
}

func parseMetadata(path string, raw json.RawMessage) (map[string]string, error) {
	if jsonKind(raw) == "null" {
		return nil, nil
	}
	members, err := jsonObject(raw)
	if err == errNotObject {
		return nil, fileErr(path, ErrBadHeader, `"__metadata__" is `+jsonKind(raw)+", not an object of strings", nil)
	}
	if err != nil {
		return nil, fileErr(path, ErrBadHeader, `"__metadata__" is not valid JSON`, err)
	}
	meta := make(map[string]string, len(members))
	for _, m := range members {
		if _, dup := meta[m.key]; dup {
			return nil, fileErr(path, ErrBadHeader, fmt.Sprintf("__metadata__ key %q occurs twice", m.key), nil)
		}
		s, ok := jsonString(m.val)
		if !ok {
			return nil, fileErr(path, ErrBadHeader, fmt.Sprintf("__metadata__ value for %q is %s, not a string", m.key, jsonKind(m.val)), nil)
		}
		meta[m.key] = s
	}
	return meta, nil
}

// parseTensorInfo parses and checks one header entry on its own (dtype,
// shape, offsets within [0, dataSize], byte length).
func parseTensorInfo(path, name string, raw json.RawMessage, dataSize int64) (*TensorInfo, error) {
	bad := func(kind error, format string, args ...any) error {
		return tensorErr(path, name, kind, fmt.Sprintf(format, args...), nil)
	}
	members, err := jsonObject(raw)
	if err == errNotObject {
		return nil, bad(ErrBadHeader, "entry is %s, not an object", jsonKind(raw))
	}
	if err != nil {
		return nil, tensorErr(path, name, ErrBadHeader, "entry is not valid JSON", err)
	}
	var dtypeRaw, shapeRaw, offRaw json.RawMessage
	for _, m := range members {
		var dst *json.RawMessage
		switch m.key {
		case "dtype":
			dst = &dtypeRaw
		case "shape":
			dst = &shapeRaw
		case "data_offsets":
			dst = &offRaw
		default:
			continue // unknown keys are ignored, as by the reference
		}
		if *dst != nil {
			return nil, bad(ErrBadHeader, "field %q occurs twice", m.key)
		}
		*dst = m.val
	}
	for _, f := range []struct {
		name string
		raw  json.RawMessage
	}{{"dtype", dtypeRaw}, {"shape", shapeRaw}, {"data_offsets", offRaw}} {
		if f.raw == nil {
			return nil, bad(ErrBadHeader, "missing field %q", f.name)
		}
	}

	ti := &TensorInfo{Name: name}
	dname, ok := jsonString(dtypeRaw)
	if !ok {
		return nil, bad(ErrBadHeader, `"dtype" is %s, not a string`, jsonKind(dtypeRaw))
	}
	if ti.DType, err = ParseDType(dname); err != nil {
		return nil, bad(ErrDType, "unknown dtype %q", dname)
	}

	shapeArr, ok := jsonArray(shapeRaw)
	if !ok {
		return nil, bad(ErrBadHeader, `"shape" is %s, not an array`, jsonKind(shapeRaw))
	}
	dims := make([]uint64, len(shapeArr))
	ti.Shape = make([]int64, len(shapeArr))
	for i, e := range shapeArr {
		v, st := jsonUint(e)
		switch {
		case st == uintNotInt:
			return nil, bad(ErrBadHeader, `"shape" dimension %d is %s, not an integer`, i, bytes.TrimSpace(e))
		case st == uintNegative:
			return nil, bad(ErrShape, "shape %s has negative dimension %d", compact(shapeRaw), i)
		case st == uintTooLarge || v > 1<<63-1:
			return nil, bad(ErrShape, "shape %s dimension %d exceeds 2^63-1", compact(shapeRaw), i)
		}
		dims[i], ti.Shape[i] = v, int64(v)
	}

	offArr, ok := jsonArray(offRaw)
	if !ok || len(offArr) != 2 {
		if ok {
			return nil, bad(ErrBadHeader, `"data_offsets" has %d elements, want 2`, len(offArr))
		}
		return nil, bad(ErrBadHeader, `"data_offsets" is %s, not an array`, jsonKind(offRaw))
	}
	var off [2]uint64
	for i, e := range offArr {
		v, st := jsonUint(e)
		switch st {
		case uintNotInt:
			return nil, bad(ErrBadHeader, `"data_offsets"[%d] is %s, not an integer`, i, bytes.TrimSpace(e))
		case uintNegative:
			return nil, bad(ErrOffsets, "data_offsets %s: negative offset", compact(offRaw))
		case uintTooLarge:
			return nil, bad(ErrOffsets, "data_offsets %s: offset %d exceeds 2^64-1, beyond the %d-byte data section",
				compact(offRaw), i, dataSize)
		}
		off[i] = v
	}
	if off[0] > off[1] {
		return nil, bad(ErrOffsets, "data_offsets [%d, %d]: begin > end", off[0], off[1])
	}
	if off[1] > uint64(dataSize) {
		return nil, bad(ErrOffsets, "data_offsets [%d, %d] end beyond the %d-byte data section", off[0], off[1], dataSize)
	}
	ti.Begin, ti.End = int64(off[0]), int64(off[1])

	need, msg := byteSize(ti.DType, dims)
	if msg != "" {
		return nil, bad(ErrSizeMismatch, "data_offsets [%d, %d] hold %d bytes, dtype %v shape %s %s",
			ti.Begin, ti.End, ti.End-ti.Begin, ti.DType, formatShape(ti.Shape), msg)
	}
	if have := ti.End - ti.Begin; have != need {
		return nil, bad(ErrSizeMismatch, "data_offsets [%d, %d] hold %d bytes, dtype %v shape %s needs %d",
			ti.Begin, ti.End, have, ti.DType, formatShape(ti.Shape), need)
	}
	return ti, nil
}

// compact renders a short JSON value for an error message.
func compact(raw []byte) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil || b.Len() > 200 {
		if len(raw) > 200 {
			raw = raw[:200]
		}
		return string(raw)
	}
	return b.String()
}

// checkTiling verifies that the tensors, sorted by (Begin, End), cover
// [0, dataSize) exactly once: each starts where the previous one ends.
// Zero-length tensors may sit at any such boundary.
func checkTiling(path string, tensors map[string]*TensorInfo, dataSize int64) error {
	order := make([]*TensorInfo, 0, len(tensors))
	for _, t := range tensors {
		order = append(order, t)
	}
	slices.SortFunc(order, func(a, b *TensorInfo) int {
		return cmp.Or(cmp.Compare(a.Begin, b.Begin), cmp.Compare(a.End, b.End), cmp.Compare(a.Name, b.Name))
	})
	var cursor int64
	var prev *TensorInfo // the tensor that ends at cursor (nil at 0)
	for _, t := range order {
		switch {
		case t.Begin < cursor:
			return tensorErr(path, t.Name, ErrOffsets, fmt.Sprintf(
				"data_offsets [%d, %d] overlap tensor %q at [%d, %d]", t.Begin, t.End, prev.Name, prev.Begin, prev.End), nil)
		case t.Begin > cursor:
			after := "the start of the data section"
			if prev != nil {
				after = fmt.Sprintf("tensor %q at [%d, %d]", prev.Name, prev.Begin, prev.End)
			}
			return tensorErr(path, t.Name, ErrOffsets, fmt.Sprintf(
				"data_offsets [%d, %d] leave a hole of %d bytes after %s", t.Begin, t.End, t.Begin-cursor, after), nil)
		}
		if t.End > cursor || prev == nil {
			cursor, prev = t.End, t
		}
	}
	if cursor != dataSize {
		return fileErr(path, ErrOffsets, fmt.Sprintf(
			"tensors cover %d bytes but the data section holds %d: %d trailing bytes belong to no tensor",
			cursor, dataSize, dataSize-cursor), nil)
	}
	return nil
}
