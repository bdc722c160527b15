package server

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v15/arrow/flight"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/npsfuse/npsfuse/daemon/config"
	"github.com/npsfuse/npsfuse/daemon/jobs"
	"github.com/npsfuse/npsfuse/daemon/tensors"
)

// putService is a service with just what receiveUpload needs: uploads
// in dir, at most 1 MiB each.
func putService(dir string) *service {
	return &service{cfg: &config.Config{MaxUploadBytes: 1 << 20, MaxMessageBytes: 4 << 20},
		env: &jobs.Env{Uploads: dir}, uploading: map[string]bool{}}
}

// putMessages is an upload as DoPut receives it: the descriptor command
// with the schema, then the messages of msgs ([u32 len][header][u32
// len][body]…, as the fuzzer mutates them).
func putMessages(cmd, msgs []byte) func() (*flight.FlightData, error) {
	var out []*flight.FlightData
	next := func() ([]byte, bool) {
		if len(msgs) < 4 {
			return nil, false
		}
		n := min(int(binary.LittleEndian.Uint32(msgs)), len(msgs)-4)
		v := msgs[4 : 4+n : 4+n]
		msgs = msgs[4+n:]
		return v, true
	}
	for {
		h, ok := next()
		if !ok {
			break
		}
		b, _ := next()
		out = append(out, &flight.FlightData{DataHeader: h, DataBody: b})
	}
	if len(out) == 0 {
		out = append(out, &flight.FlightData{})
	}
	out[0].FlightDescriptor = &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: cmd}
	return func() (*flight.FlightData, error) {
		if len(out) == 0 {
			return nil, io.EOF
		}
		fd := out[0]
		out = out[1:]
		return fd, nil
	}
}

// frameMessages packs messages for putMessages.
func frameMessages(msgs ...[]byte) []byte {
	var out []byte
	for _, m := range msgs {
		out = binary.LittleEndian.AppendUint32(out, uint32(len(m)))
		out = append(out, m...)
	}
	return out
}

// putSeed is a valid upload of "w" (uint8, 777 bytes) in pieces of 300
// bytes, of which the first upTo are sent; header(i) may change piece
// i's header.
func putSeed(header func(i int, h []byte) []byte, upTo int) (cmd, msgs []byte) {
	cmd = []byte(`{"upload": "u1", "tensors": [{"name": "w", "dtype": "uint8", "shape": [777]}]}`)
	dt, _ := tensors.ParseDType("uint8")
	m := tensors.Meta{Name: "w", DType: dt, Shape: []int64{777}}
	data := bytes.Repeat([]byte{7}, 777)
	parts := [][]byte{tensors.SchemaHeader(), nil}
	for i, off := 0, 0; off < len(data) && i < upTo; i, off = i+1, off+300 {
		h, b := tensors.PieceMessage(m, int64(off), data[off:min(off+300, len(data))])
		parts = append(parts, header(i, h), b)
	}
	return cmd, frameMessages(parts...)
}

// patchInt64 replaces the last little-endian int64 equal to old in b.
func patchInt64(b []byte, old, new int64) []byte {
	var o [8]byte
	binary.LittleEndian.PutUint64(o[:], uint64(old))
	b = bytes.Clone(b)
	if i := bytes.LastIndex(b, o[:]); i >= 0 {
		binary.LittleEndian.PutUint64(b[i:], uint64(new))
	}
	return b
}

// TestDoPutRefusesHostileUploads: malformed uploads over the network are
// refused with INVALID_ARGUMENT naming the upload and the problem, and
// leave no file behind. "buffer of 1 TiB" is a 1 KiB upload that made the
// arrow-go v15 reader DoPut used before allocate 1 TiB: an unrecoverable
// fatal error that ended the daemon.
func TestDoPutRefusesHostileUploads(t *testing.T) {
	keep := func(_ int, h []byte) []byte { return h }
	good, goodMsgs := putSeed(keep, 3)
	_, shortMsgs := putSeed(keep, 2)
	tib, tibMsgs := putSeed(func(i int, h []byte) []byte {
		if i == 1 {
			return patchInt64(h, 300, 1<<40)
		}
		return h
	}, 3)
	cases := []struct {
		name      string
		cmd, msgs []byte
		want      string
	}{
		{"buffer of 1 TiB", tib, tibMsgs, "outside the"},
		{"no schema", good, frameMessages(nil, nil), "no message carried the tensor-set schema"},
		{"batch first", good, goodMsgs[4+len(tensors.SchemaHeader())+4:], "must start with the tensor-set schema"},
		{"garbage", good, frameMessages([]byte("not a flatbuffer"), nil), "outside the"},
		{"short", good, shortMsgs, "incomplete upload: tensor \"w\": 600 of its 777 bytes arrived"},
		{"other tensor", []byte(`{"upload": "u1", "tensors": [{"name": "v", "dtype": "uint8", "shape": [777]}]}`), goodMsgs, `"w" is not in the upload's manifest`},
		{"other dtype", []byte(`{"upload": "u1", "tensors": [{"name": "w", "dtype": "int8", "shape": [777]}]}`), goodMsgs, "the manifest int8"},
		{"repeated name", []byte(`{"upload": "u1", "tensors": [{"name": "w", "dtype": "uint8", "shape": [777]}, {"name": "w", "dtype": "uint8", "shape": [1]}]}`), goodMsgs, "repeated"},
	}
	for _, c := range cases {
		dir := t.TempDir()
		_, _, err := putService(dir).receiveUpload(putMessages(c.cmd, c.msgs))
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "upload u1") {
			t.Errorf("%s: %v, want INVALID_ARGUMENT naming upload u1 and mentioning %q", c.name, err, c.want)
		}
		if left, _ := os.ReadDir(dir); len(left) != 0 {
			t.Errorf("%s: left %d files behind", c.name, len(left))
		}
	}
	dir := t.TempDir()
	body, n, err := putService(dir).receiveUpload(putMessages(good, goodMsgs))
	if err != nil || n != 777 || !strings.Contains(string(body), `"ref":"upload:u1"`) {
		t.Fatalf("the valid seed: %s, %d bytes, %v", body, n, err)
	}
}

// FuzzDoPut feeds arbitrary Flight messages to DoPut's receiving path
// (receiveUpload: the descriptor, tensors.StreamDecoder, the upload
// writer), where network bytes arrive. It must never panic, refuse only
// with a client's error code (never INTERNAL), and an accepted upload
// must be a tensor file that opens and holds the bytes reported.
func FuzzDoPut(f *testing.F) {
	keep := func(_ int, h []byte) []byte { return h }
	for _, h := range []func(int, []byte) []byte{
		keep,
		func(_ int, h []byte) []byte { return patchInt64(h, 300, 1<<40) }, // a buffer of 1 TiB
		func(_ int, h []byte) []byte { return patchInt64(h, 1, 1<<40) },   // 2^40 rows
	} {
		cmd, msgs := putSeed(h, 3)
		f.Add(cmd, msgs)
	}
	f.Add([]byte(`{"upload": "e", "tensors": []}`), frameMessages(tensors.SchemaHeader(), nil))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, cmd, msgs []byte) {
		s := putService(dir)
		body, n, err := s.receiveUpload(putMessages(cmd, msgs))
		if err != nil {
			if c := status.Code(err); c == codes.Internal || c == codes.Unknown {
				t.Fatalf("refused with %v: %v", c, err)
			}
			return
		}
		var res struct {
			Upload string `json:"upload"`
			Bytes  int64  `json:"bytes"`
		}
		if err := json.Unmarshal(body, &res); err != nil || res.Bytes != n {
			t.Fatalf("reply %s (%v)", body, err)
		}
		p := s.env.FlightUploadPath(res.Upload)
		defer os.Remove(p)
		src, err := tensors.OpenIPC(p)
		if err != nil {
			t.Fatalf("accepted upload does not open: %v", err)
		}
		defer src.Close()
		var total int64
		for _, name := range src.Names() {
			m, _ := src.Meta(name)
			total += m.Bytes()
		}
		if total != n {
			t.Fatalf("stored %d tensor bytes, received %d", total, n)
		}
	})
}
