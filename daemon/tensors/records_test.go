package tensors

// The tensor-set schema as arrow-go values, for interoperability tests:
// the daemon itself encodes and decodes tensor sets with its own code.

import (
	"fmt"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"github.com/apache/arrow/go/v15/arrow/memory"
)

// Schema is the tensor-set schema as an Arrow schema (Columns: utf8,
// utf8, utf8, int64, large_binary; none nullable).
var Schema = arrow.NewSchema([]arrow.Field{
	{Name: "name", Type: arrow.BinaryTypes.String},
	{Name: "dtype", Type: arrow.BinaryTypes.String},
	{Name: "shape", Type: arrow.BinaryTypes.String},
	{Name: "offset", Type: arrow.PrimitiveTypes.Int64},
	{Name: "data", Type: arrow.BinaryTypes.LargeBinary},
}, nil)

// CheckSchema reports whether s is a tensor-set schema (utf8 columns may
// also be large_utf8, and data binary).
func CheckSchema(s *arrow.Schema) error {
	if s.NumFields() != len(Columns) {
		return fmt.Errorf("%w: %d columns; a tensor set has %v", ErrIPC, s.NumFields(), Columns)
	}
	for i, f := range s.Fields() {
		if f.Name != Columns[i] {
			return fmt.Errorf("%w: column %d is %q; a tensor set has columns %v in that order", ErrIPC, i, f.Name, Columns)
		}
		ok := false
		switch f.Name {
		case "offset":
			ok = f.Type.ID() == arrow.INT64
		case "data":
			ok = f.Type.ID() == arrow.LARGE_BINARY || f.Type.ID() == arrow.BINARY
		default:
			ok = f.Type.ID() == arrow.STRING || f.Type.ID() == arrow.LARGE_STRING
		}
		if !ok {
			return fmt.Errorf("%w: column %s has type %v", ErrIPC, f.Name, f.Type)
		}
	}
	return nil
}

// RowsOf returns the rows of a record with the tensor-set schema. Data
// slices alias the record's buffers (valid while it is retained).
func RowsOf(rec arrow.Record) ([]Chunk, error) {
	if err := CheckSchema(rec.Schema()); err != nil {
		return nil, err
	}
	n := int(rec.NumRows())
	out := make([]Chunk, n)
	for c := range Columns {
		col := rec.Column(c)
		if col.NullN() != 0 {
			return nil, fmt.Errorf("%w: column %s has nulls", ErrIPC, Columns[c])
		}
		for r := 0; r < n; r++ {
			switch a := col.(type) {
			case *array.String:
				setStr(&out[r], c, a.Value(r))
			case *array.LargeString:
				setStr(&out[r], c, a.Value(r))
			case *array.Int64:
				out[r].Offset = a.Value(r)
			case *array.LargeBinary:
				out[r].Data = a.Value(r)
			case *array.Binary:
				out[r].Data = a.Value(r)
			}
		}
	}
	return out, nil
}

func setStr(c *Chunk, col int, s string) {
	switch col {
	case 0:
		c.Name = s
	case 1:
		c.DType = s
	case 2:
		c.Shape = s
	}
}

// Record builds a one-row record holding bytes [offset, offset+len(data))
// of tensor m. data is not copied: the record aliases it.
func Record(m Meta, offset int64, data []byte) arrow.Record {
	str := func(s string) arrow.Array {
		offs := arrow.Int32Traits.CastToBytes([]int32{0, int32(len(s))})
		d := array.NewData(arrow.BinaryTypes.String, 1,
			[]*memory.Buffer{nil, memory.NewBufferBytes(offs), memory.NewBufferBytes([]byte(s))}, nil, 0, 0)
		defer d.Release()
		return array.MakeFromData(d)
	}
	offVals := arrow.Int64Traits.CastToBytes([]int64{offset})
	od := array.NewData(arrow.PrimitiveTypes.Int64, 1, []*memory.Buffer{nil, memory.NewBufferBytes(offVals)}, nil, 0, 0)
	defer od.Release()
	dOffs := arrow.Int64Traits.CastToBytes([]int64{0, int64(len(data))})
	dd := array.NewData(arrow.BinaryTypes.LargeBinary, 1,
		[]*memory.Buffer{nil, memory.NewBufferBytes(dOffs), memory.NewBufferBytes(data)}, nil, 0, 0)
	defer dd.Release()
	cols := []arrow.Array{str(m.Name), str(WireName(m.DType)), str(FormatShape(m.Shape)), array.MakeFromData(od), array.MakeFromData(dd)}
	rec := array.NewRecord(Schema, cols, 1)
	for _, c := range cols {
		c.Release()
	}
	return rec
}
