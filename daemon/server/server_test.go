package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow/go/v15/arrow/flight"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/daemon/config"
	"github.com/npsfuse/npsfuse/daemon/tensors"
)

const token = "test-token-123456"

// syncBuffer collects the daemon's JSON log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type daemon struct {
	addr, metrics, root string
	cancel              context.CancelFunc
	done                chan error
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// start runs a daemon on TCP with one token, in this process.
func start(t *testing.T) *daemon {
	t.Helper()
	base := t.TempDir()
	root := filepath.Join(base, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	listen, _ := config.ParseAddress("tcp://" + addr)
	cfg := &config.Config{Listen: listen, Tokens: []string{token}, DataRoots: []string{root},
		Store: filepath.Join(base, "state", "jobs.db"), Uploads: filepath.Join(base, "state", "uploads"),
		Results: filepath.Join(base, "state", "results"), ShmDir: filepath.Join(base, "shm"), Workers: 2,
		MemoryBudget: 1 << 30, MetricsListen: "127.0.0.1:0", MaxMessageBytes: 4 << 20, MaxUploadBytes: 1 << 20,
		DrainTimeout: 5 * time.Second}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemon{addr: addr, root: root, cancel: cancel, done: make(chan error, 1)}
	go func() { d.done <- Run(ctx, cfg, slog.New(slog.NewJSONHandler(logs, nil))) }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(logs.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "npsfused ready" {
				d.metrics = rec["metrics"].(string)
			}
		}
		if d.metrics != "" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d.metrics == "" {
		t.Fatalf("daemon not ready; log:\n%s", logs.String())
	}
	t.Cleanup(func() {
		cancel()
		if err := <-d.done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return d
}

func (d *daemon) client(t *testing.T) flight.Client {
	t.Helper()
	c, err := flight.NewClientWithMiddleware(d.addr, nil, nil, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func authed(tok string) context.Context {
	if tok == "" {
		return context.Background()
	}
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}

// act runs an action and returns its JSON results.
func act(ctx context.Context, c flight.Client, typ string, body any) ([]map[string]any, error) {
	raw, _ := json.Marshal(body)
	stream, err := c.DoAction(ctx, &flight.Action{Type: typ, Body: raw})
	if err != nil {
		return nil, err
	}
	var out []map[string]any
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		var m map[string]any
		if err := json.Unmarshal(r.Body, &m); err != nil {
			return out, err
		}
		out = append(out, m)
	}
}

func (d *daemon) scrape(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestAuth(t *testing.T) {
	d := start(t)
	c := d.client(t)
	for _, tok := range []string{"", "wrong-token-0000"} {
		if _, err := act(authed(tok), c, "info", nil); status.Code(err) != codes.Unauthenticated {
			t.Errorf("token %q: %v, want Unauthenticated", tok, err)
		}
		// Streams (DoGet) are checked too.
		s, err := c.DoGet(authed(tok), &flight.Ticket{Ticket: []byte(`{"job": 1}`)})
		if err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("DoGet with token %q: %v, want Unauthenticated", tok, err)
		}
	}
	if _, err := act(authed(token), c, "info", nil); err != nil {
		t.Fatalf("valid token: %v", err)
	}
	m := d.scrape(t)
	for _, want := range []string{`npsfused_auth_failures_total{reason="missing"} 2`, `npsfused_auth_failures_total{reason="invalid"} 2`, `npsfused_jobs{state="queued"} 0`, "npsfused_queue_depth 0"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	resp, err := http.Get("http://" + d.metrics + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("healthz: %v %v", resp, err)
	}
}

// put uploads tensors (name → float32 values) over DoPut.
func put(t *testing.T, c flight.Client, name string, ts map[string][]float32, chunk int) error {
	t.Helper()
	ctx := authed(token)
	stream, err := c.DoPut(ctx)
	if err != nil {
		return err
	}
	type tm struct {
		Name  string  `json:"name"`
		DType string  `json:"dtype"`
		Shape []int64 `json:"shape"`
	}
	var manifest []tm
	var names []string
	for n := range ts {
		names = append(names, n)
	}
	for _, n := range names {
		manifest = append(manifest, tm{n, "float32", []int64{int64(len(ts[n]))}})
	}
	cmd, _ := json.Marshal(map[string]any{"upload": name, "tensors": manifest})
	msg := func(fd *flight.FlightData) error {
		err := stream.Send(fd)
		if err == io.EOF { // the server ended the call: its status follows
			_, err = stream.Recv()
		}
		return err
	}
	if err := msg(&flight.FlightData{FlightDescriptor: &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: cmd},
		DataHeader: tensors.SchemaHeader()}); err != nil {
		return err
	}
	for _, n := range names {
		b := f32bytes(ts[n])
		m := tensors.Meta{Name: n, DType: safetensors.F32, Shape: []int64{int64(len(ts[n]))}}
		for off := 0; off < len(b); off += chunk {
			h, body := tensors.PieceMessage(m, int64(off), b[off:min(off+chunk, len(b))])
			if err := msg(&flight.FlightData{DataHeader: h, DataBody: body}); err != nil {
				return err
			}
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	for {
		_, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func f32bytes(x []float32) []byte {
	b := make([]byte, 4*len(x))
	for i, v := range x {
		binaryPutF32(b[4*i:], v)
	}
	return b
}

// fetch reads a DoGet stream into name → bytes.
func fetch(t *testing.T, c flight.Client, ticket string) (map[string][]byte, error) {
	t.Helper()
	s, err := c.DoGet(authed(token), &flight.Ticket{Ticket: []byte(ticket)})
	if err != nil {
		return nil, err
	}
	var dec tensors.StreamDecoder
	out := map[string][]byte{}
	for {
		fd, err := s.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		rows, err := dec.Next(fd.DataHeader, fd.DataBody)
		if err != nil {
			return nil, err
		}
		for _, row := range rows {
			out[row.Name] = append(out[row.Name], row.Data...)
		}
	}
}

func TestUploadMergeFetch(t *testing.T) {
	d := start(t)
	c := d.client(t)
	base := map[string][]float32{"w": make([]float32, 3000), "b": {1, 2, 3}}
	ft := map[string][]float32{"w": make([]float32, 3000), "b": {2, 2, 5}}
	for i := range base["w"] {
		base["w"][i] = float32(i)
		ft["w"][i] = float32(i) + 0.5
	}
	if err := put(t, c, "base", base, 1000); err != nil { // pieces of 1000 bytes
		t.Fatal(err)
	}
	if err := put(t, c, "ft", ft, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := put(t, c, "ft", ft, 1<<20); status.Code(err) != codes.AlreadyExists {
		t.Errorf("second upload of the same name: %v, want AlreadyExists", err)
	}
	if err := put(t, c, "huge", map[string][]float32{"x": make([]float32, 1<<19)}, 1<<20); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("upload over max_upload_size: %v, want ResourceExhausted", err)
	}
	got, err := fetch(t, c, `{"upload": "base"}`)
	if err != nil || !bytes.Equal(got["w"], f32bytes(base["w"])) {
		t.Fatalf("upload round trip: %v", err)
	}
	spec := map[string]any{"type": "merge", "idempotency_key": "k", "spec": map[string]any{
		"config": map[string]any{"merge_method": "task_arithmetic", "base_model": "upload:base",
			"models": []any{map[string]any{"model": "upload:ft"}}, "parameters": map[string]any{"lambda": 2}},
		"cleanup": []string{"upload:ft"}}}
	res, err := act(authed(token), c, "submit", spec)
	if err != nil {
		t.Fatal(err)
	}
	id := res[0]["job"].(map[string]any)["id"]
	sts, err := act(authed(token), c, "watch", map[string]any{"id": id, "timeout": 20})
	if err != nil {
		t.Fatal(err)
	}
	last := sts[len(sts)-1]
	if last["state"] != "done" {
		t.Fatalf("job ended %v", last)
	}
	out, err := fetch(t, c, fmt.Sprintf(`{"job": %v}`, id))
	if err != nil {
		t.Fatal(err)
	}
	// θ₀ + 2·(θ₁ − θ₀)
	if want := f32bytes([]float32{3, 2, 7}); !bytes.Equal(out["b"], want) {
		t.Errorf("b = % x, want % x", out["b"], want)
	}
	if _, err := act(authed(token), c, "upload_info", map[string]any{"name": "ft"}); status.Code(err) != codes.NotFound {
		t.Errorf("the consumed upload still exists: %v", err)
	}
	if !strings.Contains(d.scrape(t), `npsfused_jobs{state="done"} 1`) {
		t.Error("metrics do not count the done job")
	}
}

func TestRefusals(t *testing.T) {
	d := start(t)
	c := d.client(t)
	ctx := authed(token)
	cases := []struct {
		action string
		body   any
		code   codes.Code
		msg    string
	}{
		{"submit", map[string]any{"type": "merge", "spec": map[string]any{"config": map[string]any{
			"merge_method": "ties", "base_model": "/etc", "models": []any{map[string]any{"model": "/etc"}}}}},
			codes.PermissionDenied, "outside the data roots"},
		{"submit", map[string]any{"type": "fold", "spec": map[string]any{}}, codes.InvalidArgument, "unknown job type"},
		{"submit", map[string]any{"type": "evolve", "spec": map[string]any{"models": []string{"upload:a"}}}, codes.InvalidArgument, "initial population"},
		{"status", map[string]any{"id": 42}, codes.NotFound, "no such job"},
		{"dance", nil, codes.InvalidArgument, "unknown action"},
		{"status", map[string]any{"id": 1, "extra": true}, codes.InvalidArgument, "unknown field"},
		{"submit", map[string]any{"type": "merge", "spec": map[string]any{"config": strings.Repeat("x", 5<<20)}}, codes.ResourceExhausted, "larger than max"},
	}
	for _, c2 := range cases {
		_, err := act(ctx, c, c2.action, c2.body)
		if status.Code(err) != c2.code || !strings.Contains(err.Error(), c2.msg) {
			t.Errorf("%s: %v, want %v mentioning %q", c2.action, err, c2.code, c2.msg)
		}
	}
	_ = d
}

func TestListFlights(t *testing.T) {
	d := start(t)
	c := d.client(t)
	ctx := authed(token)
	if err := os.MkdirAll(filepath.Join(d.root, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A job that fails (no weights in the folder) is still listed.
	if _, err := act(ctx, c, "submit", map[string]any{"type": "merge", "spec": map[string]any{"config": map[string]any{
		"merge_method": "linear", "models": []any{map[string]any{"model": filepath.Join(d.root, "x")}}}}}); err != nil {
		t.Fatal(err)
	}
	s, err := c.ListFlights(ctx, &flight.Criteria{Expression: []byte(`{"type": "merge"}`)})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		info, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var st map[string]any
		if err := json.Unmarshal(info.AppMetadata, &st); err != nil || st["type"] != "merge" {
			t.Errorf("flight info metadata %s", info.AppMetadata)
		}
		n++
	}
	if n != 1 {
		t.Errorf("%d flights listed, want 1", n)
	}
}

func binaryPutF32(b []byte, v float32) {
	u := math.Float32bits(v)
	b[0], b[1], b[2], b[3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
}
