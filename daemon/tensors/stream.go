package tensors

import (
	"fmt"
)

// StreamDecoder reads a tensor set from the messages of an Arrow IPC
// stream as Arrow Flight carries them (each FlightData holds one message:
// data_header is the Message flatbuffer, data_body its body). It is the
// bounds-checked reader ParseIPC uses for files: the first message must
// be the tensor-set schema, every later one a record batch of it; a
// malformed message is an error wrapping ErrIPC, never a panic, and
// nothing is allocated from a length that was not checked against the
// bytes received. The zero value is ready to use.
type StreamDecoder struct {
	cols []colKind
}

// Started reports whether the schema message was read.
func (d *StreamDecoder) Started() bool { return d.cols != nil }

// Next decodes one message and returns its rows (none for the schema).
// Rows' Data alias body. A message with neither header nor body (Flight
// metadata only) gives no rows.
func (d *StreamDecoder) Next(header, body []byte) ([]Chunk, error) {
	if len(header) == 0 && len(body) == 0 {
		return nil, nil
	}
	if d.cols != nil {
		rows, err := batchRows(header, body, d.cols)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrIPC, err)
		}
		return rows, nil
	}
	msg, ht, err := message(header)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrIPC, err)
	}
	if ht != headerSchema {
		return nil, fmt.Errorf("%w: the stream must start with the tensor-set schema %v (got message type %d)", ErrIPC, Columns, ht)
	}
	s, ok, err := msg.sub(2)
	if err != nil || !ok {
		return nil, fmt.Errorf("%w: schema message without a schema (%v)", ErrIPC, err)
	}
	if d.cols, err = parseSchema(s); err != nil {
		return nil, err
	}
	return nil, nil
}

// schemaHeader is the tensor-set schema's Message flatbuffer.
var schemaHeader = buildMessage(headerSchema, buildSchema, 0)

// SchemaHeader is the data_header of a stream's first message: the
// tensor-set schema (Columns), as WriteIPC writes it into files.
func SchemaHeader() []byte { return schemaHeader }

// SchemaMessage is the tensor-set schema as an IPC stream holding the
// schema message alone (continuation marker, length, flatbuffer, padding,
// end-of-stream marker), as FlightInfo.schema and GetSchema carry it.
func SchemaMessage() []byte {
	return append(encapsulate(schemaHeader, 0, 8), 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0)
}

// PieceMessage is the message of a one-row record batch holding bytes
// [offset, offset+len(data)) of tensor m, laid out as WriteIPC lays out
// a tensor in a file: header is its flatbuffer, body its body (a copy of
// data after the row's small buffers, 64-byte aligned within the body).
func PieceMessage(m Meta, offset int64, data []byte) (header, body []byte) {
	n := int64(len(data))
	header, bodyLen := batchMessage(m, n)
	body = make([]byte, bodyLen)
	prefix := bodyPrefix(m, offset, n)
	copy(body, prefix)
	copy(body[len(prefix):], data)
	return header, body
}
