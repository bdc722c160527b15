package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/apache/arrow/go/v15/arrow/flight"

	"github.com/npsfuse/npsfuse/daemon/config"
	"github.com/npsfuse/npsfuse/daemon/jobs"
	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/daemon/tensors"
	"github.com/npsfuse/npsfuse/gocore/fault"
)

// service is the Arrow Flight service: tensors in with DoPut, out with
// DoGet, jobs through DoAction, the job list through ListFlights.
type service struct {
	flight.BaseFlightServer
	cfg     *config.Config
	env     *jobs.Env
	runner  *jobs.Runner
	metrics *metrics
	log     *slog.Logger
	unix    bool

	mu        sync.Mutex
	uploading map[string]bool // upload names being received

	actOnce sync.Once
	acts    map[string]action
}

// chunkBytes is the largest tensor piece one DoGet message carries: well
// under the message limit, large enough to amortise per-message costs.
func (s *service) chunkBytes() int64 {
	return min(s.cfg.MaxMessageBytes/2, 16<<20)
}

// decodeJSON decodes a request body strictly (unknown keys are errors).
func decodeJSON(b []byte, v any, what string) error {
	if len(bytes.TrimSpace(b)) == 0 {
		b = []byte("{}")
	}
	if err := fault.DecodeJSON(b, v, false); err != nil {
		return statusf(fault.InvalidInput, "%s: %v", what, err)
	}
	return nil
}

// ticket names what DoGet streams: a job's result, a session candidate's
// tensors, or an upload.
type ticket struct {
	Job       uint64    `json:"job,omitempty"`
	Candidate []float64 `json:"candidate,omitempty"`
	Upload    string    `json:"upload,omitempty"`
	Chunk     int64     `json:"chunk,omitempty"`
}

// DoGet streams tensors as one-row record batches of the tensor-set
// schema, encoded as they are in tensor files (tensors.PieceMessage):
// the schema message first, then each tensor in pieces of at most chunk
// bytes.
func (s *service) DoGet(t *flight.Ticket, stream flight.FlightService_DoGetServer) error {
	var tk ticket
	if err := decodeJSON(t.Ticket, &tk, "ticket"); err != nil {
		return err
	}
	chunk := s.chunkBytes()
	if tk.Chunk > 0 {
		chunk = min(tk.Chunk, s.cfg.MaxMessageBytes-(1<<16))
	}
	var sent int64
	started := false
	start := func() error {
		if started {
			return nil
		}
		started = true
		return stream.Send(&flight.FlightData{DataHeader: tensors.SchemaHeader()})
	}
	send := func(m tensors.Meta, off int64, data []byte) error {
		if err := start(); err != nil {
			return err
		}
		h, b := tensors.PieceMessage(m, off, data)
		sent += int64(len(data))
		return stream.Send(&flight.FlightData{DataHeader: h, DataBody: b})
	}
	defer func() { s.metrics.bytesOut.WithLabelValues("flight").Add(float64(sent)) }()
	var err error
	if tk.Candidate != nil {
		err = s.sendCandidate(tk.Job, tk.Candidate, chunk, send)
	} else {
		var p string
		if tk.Upload != "" {
			p, err = s.env.UploadPath(tk.Upload)
		} else {
			p, err = s.runner.ResultPath(tk.Job)
		}
		if err == nil {
			err = sendFile(p, chunk, send)
		}
	}
	if err != nil {
		return toStatus(err)
	}
	return start() // an empty set is the schema alone
}

// sendFile sends the tensors of a tensor file (an upload, a result).
func sendFile(p string, chunk int64, send func(tensors.Meta, int64, []byte) error) error {
	src, err := tensors.OpenIPC(p)
	if err != nil {
		return err
	}
	defer src.Close()
	return tensors.EachChunk(src, src.Names(), chunk, send)
}

// sendCandidate builds a session candidate's tensors one at a time and
// sends them.
func (s *service) sendCandidate(job uint64, params []float64, chunk int64, send func(tensors.Meta, int64, []byte) error) error {
	sess, err := s.session(job)
	if err != nil {
		return err
	}
	set, err := sess.Candidate(params)
	if err != nil {
		return err
	}
	defer set.Done()
	var buf []byte
	for i, m := range set.Metas {
		n := m.Bytes()
		if int64(cap(buf)) < n {
			buf = make([]byte, n)
		}
		b := buf[:n]
		if err := set.Fill(i, b); err != nil {
			return err
		}
		for off := int64(0); off < n || off == 0; off += chunk {
			if err := send(m, off, b[off:min(off+chunk, n)]); err != nil {
				return err
			}
			if n == 0 {
				break
			}
		}
	}
	return nil
}

// putCommand is DoPut's descriptor command: the upload's name and its
// manifest (every tensor's name, dtype and shape).
type putCommand struct {
	Upload  string `json:"upload"`
	Tensors []struct {
		Name  string  `json:"name"`
		DType string  `json:"dtype"`
		Shape []int64 `json:"shape"`
	} `json:"tensors"`
}

// DoPut receives an upload (receiveUpload) and replies with its
// reference once it is stored.
func (s *service) DoPut(stream flight.FlightService_DoPutServer) error {
	if s.runner.Draining() {
		return statusf(fault.Unavailable, "npsfused is shutting down: not accepting uploads")
	}
	body, n, err := s.receiveUpload(stream.Recv)
	if err != nil {
		return err
	}
	s.metrics.bytesIn.WithLabelValues("flight").Add(float64(n))
	return stream.Send(&flight.PutResult{AppMetadata: body})
}

// receiveUpload reads an upload from Flight messages: the first one's
// descriptor command (putCommand) names it and lists its tensors; the
// messages carry the tensor-set schema, then record batches with the
// tensors' pieces, in order per tensor. Every message goes through
// tensors.StreamDecoder, the bounds-checked reader that tensor files go
// through too (fuzzed by FuzzDoPut), and every piece straight into its
// place in an Arrow IPC tensor file laid out from the manifest, the
// format of every tensor set the daemon stores. The file is fsynced
// before the reply (its JSON body and the tensor bytes received).
func (s *service) receiveUpload(recv func() (*flight.FlightData, error)) ([]byte, int64, error) {
	first, err := recv()
	if err != nil {
		return nil, 0, statusf(fault.InvalidInput, "upload: %v", err)
	}
	desc := first.GetFlightDescriptor()
	if desc == nil || desc.Type != flight.DescriptorCMD {
		return nil, 0, statusf(fault.InvalidInput, "upload: the first message needs a CMD descriptor {\"upload\": NAME, \"tensors\": [{name, dtype, shape}]}")
	}
	var cmd putCommand
	if err := decodeJSON(desc.Cmd, &cmd, "upload descriptor"); err != nil {
		return nil, 0, err
	}
	if err := jobs.CheckUploadName(cmd.Upload); err != nil {
		return nil, 0, toStatus(err)
	}
	var dec tensors.StreamDecoder
	if _, err := dec.Next(first.DataHeader, first.DataBody); err != nil {
		return nil, 0, uploadStatus(cmd.Upload, err)
	}
	metas := make([]tensors.Meta, len(cmd.Tensors))
	var total int64
	for i, t := range cmd.Tensors {
		dt, err := tensors.ParseDType(t.DType)
		if err != nil {
			return nil, 0, statusf(fault.InvalidInput, "upload %s: tensor %q: %v", cmd.Upload, t.Name, err)
		}
		if t.Shape == nil {
			t.Shape = []int64{}
		}
		metas[i] = tensors.Meta{Name: t.Name, DType: dt, Shape: t.Shape}
		for _, d := range t.Shape {
			if d < 0 {
				return nil, 0, statusf(fault.InvalidInput, "upload %s: tensor %q has a negative dimension", cmd.Upload, t.Name)
			}
		}
		total += metas[i].Bytes()
		if total > s.cfg.MaxUploadBytes || total < 0 {
			return nil, 0, statusf(fault.ResourceExhausted, "upload %s is larger than max_upload_size (%s)",
				cmd.Upload, config.FormatSize(s.cfg.MaxUploadBytes))
		}
	}
	s.mu.Lock()
	if s.uploading[cmd.Upload] || s.env.UploadExists(cmd.Upload) {
		s.mu.Unlock()
		return nil, 0, statusf(fault.AlreadyExists, "upload %q already exists (names are single-use: delete it or pick another)", cmd.Upload)
	}
	s.uploading[cmd.Upload] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.uploading, cmd.Upload)
		s.mu.Unlock()
	}()
	uw, err := tensors.NewUploadWriter(s.env.FlightUploadPath(cmd.Upload), metas)
	if err != nil {
		return nil, 0, uploadStatus(cmd.Upload, err)
	}
	defer uw.Abort()
	for {
		fd, err := recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, 0, statusf(fault.InvalidInput, "upload %s: %v", cmd.Upload, err)
		}
		rows, err := dec.Next(fd.DataHeader, fd.DataBody)
		if err != nil {
			return nil, 0, uploadStatus(cmd.Upload, err)
		}
		for _, r := range rows {
			if err := uw.Put(r); err != nil {
				return nil, 0, uploadStatus(cmd.Upload, err)
			}
		}
	}
	if !dec.Started() {
		return nil, 0, statusf(fault.InvalidInput, "upload %s: no message carried the tensor-set schema %v", cmd.Upload, tensors.Columns)
	}
	if err := uw.Close(); err != nil {
		return nil, 0, uploadStatus(cmd.Upload, err)
	}
	body, _ := json.Marshal(map[string]any{"upload": cmd.Upload, "ref": jobs.UploadRef + cmd.Upload,
		"tensors": len(metas), "bytes": uw.Bytes()})
	return body, uw.Bytes(), nil
}

// uploadStatus is the status of an upload that failed while it was
// stored, with the code of its kind: RESOURCE_EXHAUSTED when the daemon's
// disk (or quota) is full, INVALID_ARGUMENT for pieces that do not fit the
// manifest, INTERNAL for other I/O failures (safetensors.ErrIO).
func uploadStatus(name string, err error) error {
	switch k := fault.KindOf(err); {
	case noSpace(err):
		return statusf(k, "upload %s: the daemon's upload folder is full (%w); free space or lower the upload's size", name, err)
	case k == fault.Internal:
		return statusf(k, "upload %s: storing it failed: %w", name, err)
	default:
		return statusf(k, "upload %s: %w", name, err)
	}
}

// flightInfo describes a job: its status as app metadata, and a ticket
// for its tensor result when it has one.
func (s *service) flightInfo(st *jobs.Status) *flight.FlightInfo {
	cmd, _ := json.Marshal(map[string]uint64{"job": st.ID})
	meta, _ := json.Marshal(st)
	info := &flight.FlightInfo{
		Schema:           tensors.SchemaMessage(),
		FlightDescriptor: &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: cmd},
		TotalRecords:     -1, TotalBytes: -1, Ordered: true, AppMetadata: meta,
	}
	if st.State == store.Done {
		var res struct {
			Kind     string `json:"kind"`
			Bytes    int64  `json:"bytes"`
			Released bool   `json:"released"`
		}
		if json.Unmarshal(st.Result, &res) == nil && res.Kind == "tensors" && !res.Released {
			info.TotalBytes = res.Bytes
			info.Endpoint = []*flight.FlightEndpoint{{Ticket: &flight.Ticket{Ticket: cmd}}}
		}
	}
	return info
}

// listCriteria is ListFlights' optional filter (JSON).
type listCriteria struct {
	State []store.State `json:"state,omitempty"`
	Type  string        `json:"type,omitempty"`
	After uint64        `json:"after,omitempty"`
	Limit int           `json:"limit,omitempty"`
}

func (c listCriteria) filter() store.Filter {
	limit := c.Limit
	if limit <= 0 || limit > 10000 {
		limit = 10000
	}
	return store.Filter{States: c.State, Type: c.Type, After: c.After, Limit: limit}
}

// ListFlights lists jobs, one FlightInfo each (status in app_metadata).
func (s *service) ListFlights(c *flight.Criteria, stream flight.FlightService_ListFlightsServer) error {
	var lc listCriteria
	if err := decodeJSON(c.GetExpression(), &lc, "criteria"); err != nil {
		return err
	}
	list, err := s.runner.List(lc.filter())
	if err != nil {
		return toStatus(err)
	}
	for _, st := range list {
		if err := stream.Send(s.flightInfo(st)); err != nil {
			return err
		}
	}
	return nil
}

// GetFlightInfo describes one job ({"job": id}).
func (s *service) GetFlightInfo(ctx context.Context, d *flight.FlightDescriptor) (*flight.FlightInfo, error) {
	var tk ticket
	if err := decodeJSON(d.Cmd, &tk, "descriptor"); err != nil {
		return nil, err
	}
	st, err := s.runner.Status(tk.Job)
	if err != nil {
		return nil, toStatus(err)
	}
	return s.flightInfo(st), nil
}

// GetSchema returns the tensor-set schema for any descriptor.
func (s *service) GetSchema(ctx context.Context, d *flight.FlightDescriptor) (*flight.SchemaResult, error) {
	return &flight.SchemaResult{Schema: tensors.SchemaMessage()}, nil
}

// session returns a ready session (draining daemons refuse).
func (s *service) session(id uint64) (jobs.Session, error) {
	if s.runner.Draining() {
		return nil, fmt.Errorf("%w: sessions resume after the restart", jobs.ErrDraining)
	}
	return s.runner.Session(id)
}

// removeQuietly deletes a file, ignoring a missing one.
func removeQuietly(p string) {
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		slog.Warn("remove failed", "path", p, "error", err)
	}
}
