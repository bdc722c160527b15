package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/apache/arrow/go/v15/arrow/flight"

	"github.com/npsfuse/npsfuse/daemon/jobs"
	"github.com/npsfuse/npsfuse/daemon/tensors"
	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/search"
)

// Version is the daemon's version (the Python package's).
const Version = "0.1.0"

// maxActionBody bounds a DoAction body (a job spec, scores): specs name
// tensors, they do not carry them.
const maxActionBody = 4 << 20

// action handles one DoAction type: body in, JSON results out via send.
type action struct {
	help string
	run  func(ctx context.Context, body []byte, send func(any) error) error
}

func (s *service) actions() map[string]action {
	s.actOnce.Do(func() { s.acts = s.newActions() })
	return s.acts
}

func (s *service) newActions() map[string]action {
	return map[string]action{
		"info":          {"daemon version, limits, shared-memory folder, job types, merge methods", s.actInfo},
		"health":        {"{\"status\": \"ok\" | \"draining\"}", s.actHealth},
		"submit":        {"{type, spec, idempotency_key?} → {job, existing}: store a job (on disk before the reply) and queue it", s.actSubmit},
		"submit_many":   {"{jobs: [{type, spec, idempotency_key?}]} → {jobs: [{job, existing}]}: store all (one commit) or none, then queue them", s.actSubmitMany},
		"status":        {"{id} → the job's status", statusByID("status", s.runner.Status)},
		"watch":         {"{id, timeout?, interval?, until?: final|ready} → statuses until the job is final (or its session ready)", s.actWatch},
		"cancel":        {"{id} → status: cancel a queued or running job or a session", statusByID("cancel", s.runner.Cancel)},
		"delete":        {"{id}: forget a finished job and delete its result file", s.actDelete},
		"release":       {"{id, recycle_as?}: delete a finished job's shared-memory result file once mapped (or hand it back as the free slab recycle_as)", s.actRelease},
		"jobs":          {"{state?, type?, after?, limit?} → {jobs: [...]}", s.actJobs},
		"ask":           {"{id, timeout?} → {generation, candidates, done}: a session's next candidates", s.actAsk},
		"tell":          {"{id, scores} → {generation, x, f, done}: their scores (null = failed)", s.actTell},
		"best":          {"{id} → {generation, x, f, done}", s.actBest},
		"finish":        {"{id} → status: end a session, writing the best candidate as its result", s.actFinish},
		"candidate":     {"{id, params} → {path, bytes}: a candidate's tensors as an Arrow file in shared memory", s.actCandidate},
		"upload_info":   {"{name} → the upload's tensors (validates it)", s.actUploadInfo},
		"delete_upload": {"{name, recycle_as?}: delete an upload (or move a shared-memory one to the free slab recycle_as)", s.actDeleteUpload},
		"export_upload": {"{name, recycle?} → {path, bytes, slab?}: copy an upload into an Arrow file in shared memory (a free slab of the client's when recycle names its prefix)", s.actExportUpload},
		"recycle":       {"{path, slab}: hand a shared-memory file from export_upload or candidate back as the client's free slab", s.actRecycle},
	}
}

// ListActions lists the actions and what they do.
func (s *service) ListActions(_ *flight.Empty, stream flight.FlightService_ListActionsServer) error {
	acts := s.actions()
	names := make([]string, 0, len(acts))
	for n := range acts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := stream.Send(&flight.ActionType{Type: n, Description: acts[n].help}); err != nil {
			return err
		}
	}
	return nil
}

// DoAction runs one action; every result body is JSON.
func (s *service) DoAction(a *flight.Action, stream flight.FlightService_DoActionServer) error {
	acts := s.actions()
	act, ok := acts[a.Type]
	if !ok {
		setActionName(stream.Context(), "unknown")
		names := make([]string, 0, len(acts))
		for n := range acts {
			names = append(names, n)
		}
		sort.Strings(names)
		return statusf(fault.InvalidInput, "unknown action %q (known: %s)", a.Type, strings.Join(names, ", "))
	}
	setActionName(stream.Context(), a.Type)
	if len(a.Body) > maxActionBody {
		return statusf(fault.ResourceExhausted, "action %s: body of %d bytes exceeds the %d-byte limit (specs name tensors; upload tensors with DoPut)", a.Type, len(a.Body), maxActionBody)
	}
	send := func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		return stream.Send(&flight.Result{Body: b})
	}
	return toStatus(act.run(stream.Context(), a.Body, send))
}

type idBody struct {
	ID uint64 `json:"id"`
}

func (s *service) actInfo(_ context.Context, body []byte, send func(any) error) error {
	if err := decodeJSON(body, &struct{}{}, "info"); err != nil {
		return err
	}
	transport := "tcp"
	if s.unix {
		transport = "unix"
	}
	return send(map[string]any{
		"version": Version, "pid": os.Getpid(), "transport": transport, "shm_dir": s.env.ShmDir,
		"data_roots": s.cfg.DataRoots, "job_types": jobs.Types(), "methods": merge.Methods(),
		"max_message_bytes": s.cfg.MaxMessageBytes, "max_upload_bytes": s.cfg.MaxUploadBytes,
		"chunk_bytes": s.chunkBytes(), "workers": s.cfg.Workers, "memory_budget": s.cfg.MemoryBudget,
		"draining": s.runner.Draining(), "auth_required": !s.unix,
	})
}

func (s *service) actHealth(_ context.Context, _ []byte, send func(any) error) error {
	st := "ok"
	if s.runner.Draining() {
		st = "draining"
	}
	return send(map[string]string{"status": st})
}

func (s *service) actSubmit(_ context.Context, body []byte, send func(any) error) error {
	var req jobs.Request
	if err := decodeJSON(body, &req, "submit"); err != nil {
		return err
	}
	j, existed, err := s.runner.Submit(req.Type, req.Spec, req.Key)
	if err != nil {
		return err
	}
	if !existed {
		s.metrics.submitted.WithLabelValues(j.Type).Inc()
	}
	return send(submitReply{Job: s.runner.View(j), Existing: existed})
}

// submitReply is a submit's answer: the job as stored, and whether its
// idempotency key named an earlier job.
type submitReply struct {
	Job      *jobs.Status `json:"job"`
	Existing bool         `json:"existing"`
}

func (s *service) actSubmitMany(_ context.Context, body []byte, send func(any) error) error {
	var req struct {
		Jobs []jobs.Request `json:"jobs"`
	}
	if err := decodeJSON(body, &req, "submit_many"); err != nil {
		return err
	}
	list, existed, err := s.runner.SubmitMany(req.Jobs)
	if err != nil {
		return err
	}
	out := make([]submitReply, len(list))
	for i, j := range list {
		if !existed[i] {
			s.metrics.submitted.WithLabelValues(j.Type).Inc()
		}
		out[i] = submitReply{Job: s.runner.View(j), Existing: existed[i]}
	}
	return send(map[string]any{"jobs": out})
}

func (s *service) actRelease(_ context.Context, body []byte, send func(any) error) error {
	var req struct {
		ID        uint64 `json:"id"`
		RecycleAs string `json:"recycle_as"`
	}
	if err := decodeJSON(body, &req, "release"); err != nil {
		return err
	}
	st, err := s.runner.ReleaseAs(req.ID, req.RecycleAs)
	if err != nil {
		return err
	}
	return send(st)
}

// statusByID answers an {id} action with the job status fn returns for it.
func statusByID(name string, fn func(uint64) (*jobs.Status, error)) func(context.Context, []byte, func(any) error) error {
	return func(_ context.Context, body []byte, send func(any) error) error {
		var req idBody
		if err := decodeJSON(body, &req, name); err != nil {
			return err
		}
		st, err := fn(req.ID)
		if err != nil {
			return err
		}
		return send(st)
	}
}

func seconds(v float64, def, limit time.Duration) time.Duration {
	if v <= 0 || math.IsNaN(v) {
		return def
	}
	return min(time.Duration(v*float64(time.Second)), limit)
}

func (s *service) actWatch(ctx context.Context, body []byte, send func(any) error) error {
	var req struct {
		ID       uint64  `json:"id"`
		Timeout  float64 `json:"timeout"`
		Interval float64 `json:"interval"`
		Until    string  `json:"until"`
	}
	if err := decodeJSON(body, &req, "watch"); err != nil {
		return err
	}
	if req.Until != "" && req.Until != "final" && req.Until != "ready" {
		return fmt.Errorf("%w: watch: until must be \"final\" or \"ready\", got %q", jobs.ErrInvalid, req.Until)
	}
	return s.runner.Watch(ctx, req.ID, seconds(req.Timeout, time.Minute, time.Hour),
		seconds(req.Interval, 100*time.Millisecond, time.Minute), req.Until == "ready",
		func(st *jobs.Status) error { return send(st) })
}

func (s *service) actDelete(_ context.Context, body []byte, send func(any) error) error {
	var req idBody
	if err := decodeJSON(body, &req, "delete"); err != nil {
		return err
	}
	if err := s.runner.Delete(req.ID); err != nil {
		return err
	}
	return send(map[string]uint64{"deleted": req.ID})
}

func (s *service) actJobs(_ context.Context, body []byte, send func(any) error) error {
	var req listCriteria
	if err := decodeJSON(body, &req, "jobs"); err != nil {
		return err
	}
	list, err := s.runner.List(req.filter())
	if err != nil {
		return err
	}
	if list == nil {
		list = []*jobs.Status{}
	}
	return send(map[string]any{"jobs": list})
}

func (s *service) actAsk(ctx context.Context, body []byte, send func(any) error) error {
	var req struct {
		ID      uint64  `json:"id"`
		Timeout float64 `json:"timeout"`
	}
	if err := decodeJSON(body, &req, "ask"); err != nil {
		return err
	}
	if s.runner.Draining() {
		return fmt.Errorf("%w: sessions resume after the restart", jobs.ErrDraining)
	}
	sess, err := s.runner.WaitSession(ctx, req.ID, seconds(req.Timeout, time.Minute, time.Hour))
	if err != nil {
		return err
	}
	res, err := sess.Ask()
	if err != nil {
		return err
	}
	return send(res)
}

func (s *service) actTell(_ context.Context, body []byte, send func(any) error) error {
	var req struct {
		ID     uint64        `json:"id"`
		Scores search.Scores `json:"scores"`
	}
	if err := decodeJSON(body, &req, "tell"); err != nil {
		return err
	}
	sess, err := s.session(req.ID)
	if err != nil {
		return err
	}
	res, err := sess.Tell(req.Scores) // null: a failed evaluation (NaN)
	if err != nil {
		return err
	}
	return send(res)
}

func (s *service) actBest(_ context.Context, body []byte, send func(any) error) error {
	var req idBody
	if err := decodeJSON(body, &req, "best"); err != nil {
		return err
	}
	sess, err := s.session(req.ID)
	if err != nil {
		return err
	}
	res, err := sess.Best()
	if err != nil {
		return err
	}
	return send(res)
}

func (s *service) actFinish(_ context.Context, body []byte, send func(any) error) error {
	var req idBody
	if err := decodeJSON(body, &req, "finish"); err != nil {
		return err
	}
	if s.runner.Draining() {
		return fmt.Errorf("%w: finish the session after the restart", jobs.ErrDraining)
	}
	st, err := s.runner.Finish(req.ID)
	if err != nil {
		return err
	}
	return send(st)
}

// shmFile names a new file in the shared-memory results folder.
func (s *service) shmFile(prefix string) (string, error) {
	if s.env.ShmDir == "" {
		return "", fmt.Errorf("%w: the shared-memory path is disabled on this daemon (use DoGet)", jobs.ErrInvalid)
	}
	var r [8]byte
	_, _ = rand.Read(r[:])
	return filepath.Join(s.env.ShmDir, "results", prefix+"-"+hex.EncodeToString(r[:])+".arrow"), nil
}

func (s *service) actCandidate(_ context.Context, body []byte, send func(any) error) error {
	var req struct {
		ID      uint64    `json:"id"`
		Params  []float64 `json:"params"`
		Recycle string    `json:"recycle"`
	}
	if err := decodeJSON(body, &req, "candidate"); err != nil {
		return err
	}
	path, err := s.shmFile(fmt.Sprintf("cand-%d", req.ID))
	if err != nil {
		return err
	}
	sess, err := s.session(req.ID)
	if err != nil {
		return err
	}
	set, err := sess.Candidate(req.Params)
	if err != nil {
		return err
	}
	defer set.Done()
	size, slab, err := s.env.WriteResult(path, req.Recycle, set.Metas, set.Fill, false)
	if err != nil {
		return fmt.Errorf("candidate of job %d: %w", req.ID, err)
	}
	var n int64
	for _, m := range set.Metas {
		n += m.Bytes()
	}
	s.metrics.bytesOut.WithLabelValues("shm").Add(float64(n))
	res := map[string]any{"path": path, "bytes": n, "file_bytes": size}
	if slab != "" {
		res["slab"] = slab
	}
	return send(res)
}

type uploadBody struct {
	Name string `json:"name"`
}

func (s *service) actUploadInfo(_ context.Context, body []byte, send func(any) error) error {
	var req uploadBody
	if err := decodeJSON(body, &req, "upload_info"); err != nil {
		return err
	}
	p, err := s.env.UploadPath(req.Name)
	if err != nil {
		return err
	}
	src, err := tensors.Open(p)
	if err != nil {
		return err
	}
	defer src.Close()
	type t struct {
		Name  string  `json:"name"`
		DType string  `json:"dtype"`
		Shape []int64 `json:"shape"`
	}
	var list []t
	var total int64
	for _, n := range src.Names() {
		m, _ := src.Meta(n)
		list = append(list, t{n, tensors.WireName(m.DType), m.Shape})
		total += m.Bytes()
	}
	if p == s.env.ShmUploadPath(req.Name) {
		s.metrics.bytesIn.WithLabelValues("shm").Add(float64(total))
	}
	return send(map[string]any{"name": req.Name, "ref": jobs.UploadRef + req.Name, "format": "arrow",
		"tensors": list, "bytes": total})
}

func (s *service) actDeleteUpload(_ context.Context, body []byte, send func(any) error) error {
	var req struct {
		Name      string `json:"name"`
		RecycleAs string `json:"recycle_as"`
	}
	if err := decodeJSON(body, &req, "delete_upload"); err != nil {
		return err
	}
	var err error
	if req.RecycleAs != "" {
		err = s.env.RecycleUpload(req.Name, req.RecycleAs)
	} else {
		err = s.env.DeleteUpload(req.Name)
	}
	if err != nil {
		return err
	}
	return send(map[string]string{"deleted": req.Name})
}

func (s *service) actExportUpload(_ context.Context, body []byte, send func(any) error) error {
	var req struct {
		Name    string `json:"name"`
		Recycle string `json:"recycle"`
	}
	if err := decodeJSON(body, &req, "export_upload"); err != nil {
		return err
	}
	p, err := s.env.UploadPath(req.Name)
	if err != nil {
		return err
	}
	out, err := s.shmFile("upload-" + req.Name)
	if err != nil {
		return err
	}
	src, err := tensors.Open(p)
	if err != nil {
		return err
	}
	defer src.Close()
	names := src.Names()
	metas := make([]tensors.Meta, len(names))
	for i, n := range names {
		metas[i], _ = src.Meta(n)
	}
	size, slab, err := s.env.WriteResult(out, req.Recycle, metas, func(i int, dst []byte) error {
		b, err := src.Bytes(names[i])
		if err != nil {
			return err
		}
		tensors.CopyMapped(dst, b)
		return nil
	}, false)
	if err != nil {
		removeQuietly(out)
		return fmt.Errorf("export_upload %s: %w", req.Name, err)
	}
	var n int64
	for _, m := range metas {
		n += m.Bytes()
	}
	s.metrics.bytesOut.WithLabelValues("shm").Add(float64(n))
	res := map[string]any{"path": out, "bytes": n, "file_bytes": size, "format": "arrow"}
	if slab != "" {
		res["slab"] = slab
	}
	return send(res)
}

func (s *service) actRecycle(_ context.Context, body []byte, send func(any) error) error {
	var req struct {
		Path string `json:"path"`
		Slab string `json:"slab"`
	}
	if err := decodeJSON(body, &req, "recycle"); err != nil {
		return err
	}
	if strings.HasPrefix(filepath.Base(req.Path), "job-") {
		return fmt.Errorf("%w: recycle %s: a job's result is handed back with release {id, recycle_as}", jobs.ErrInvalid, req.Path)
	}
	if err := s.env.RecycleResult(req.Path, req.Slab); err != nil {
		return err
	}
	return send(map[string]string{"recycled": req.Slab})
}
