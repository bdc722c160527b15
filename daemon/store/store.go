package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/npsfuse/npsfuse/gocore/fault"
)

// State is a job's place in its life cycle.
type State string

// The states of a job.
const (
	Queued    State = "queued"
	Running   State = "running"
	Done      State = "done"
	Failed    State = "failed"
	Cancelled State = "cancelled"
)

// States lists every state in life-cycle order.
var States = []State{Queued, Running, Done, Failed, Cancelled}

// Final reports whether no transition leaves s.
func (s State) Final() bool { return s == Done || s == Failed || s == Cancelled }

// CanTransition reports whether a job may go from one state to another
// (staying in the same non-final state is allowed).
func CanTransition(from, to State) bool {
	if from == to {
		return !from.Final()
	}
	switch from {
	case Queued:
		return to == Running || to == Cancelled || to == Failed
	case Running:
		return to == Done || to == Failed || to == Cancelled || to == Queued
	}
	return false
}

// Errors returned by the store.
var (
	ErrNotFound   = fault.New(fault.NotFound, "no such job")
	ErrKeyReused  = fault.New(fault.AlreadyExists, "idempotency key reused with a different request")
	ErrTransition = fault.New(fault.FailedPrecondition, "invalid job state transition")
	ErrClosed     = fault.New(fault.Unavailable, "job store closed")
)

// Progress is how far a job has come: Done of Total units, plus a message.
type Progress struct {
	Done    int64  `json:"done"`
	Total   int64  `json:"total"`
	Unit    string `json:"unit,omitempty"`
	Message string `json:"message,omitempty"`
}

// Job is one stored job. Spec is the validated request; Result is set on
// done; Checkpoint is the state an interrupted job resumes from.
type Job struct {
	ID         uint64          `json:"id"`
	Type       string          `json:"type"`
	State      State           `json:"state"`
	Spec       json.RawMessage `json:"spec"`
	Key        string          `json:"idempotency_key,omitempty"`
	SpecHash   string          `json:"spec_hash,omitempty"`
	Submitted  time.Time       `json:"submitted"`
	Started    *time.Time      `json:"started,omitempty"`
	Finished   *time.Time      `json:"finished,omitempty"`
	Attempts   int             `json:"attempts"`
	Progress   Progress        `json:"progress"`
	Error      string          `json:"error,omitempty"`
	Result     json.RawMessage `json:"result,omitempty"`
	Checkpoint json.RawMessage `json:"checkpoint,omitempty"`
	Notes      []string        `json:"notes,omitempty"`
	// CancelRequested is set by a cancel that the runner has yet to honour.
	CancelRequested bool `json:"cancel_requested,omitempty"`
}

// Clone returns a deep copy.
func (j *Job) Clone() *Job {
	c := *j
	c.Spec = bytes.Clone(j.Spec)
	c.Result = bytes.Clone(j.Result)
	c.Checkpoint = bytes.Clone(j.Checkpoint)
	c.Notes = append([]string(nil), j.Notes...)
	if j.Started != nil {
		t := *j.Started
		c.Started = &t
	}
	if j.Finished != nil {
		t := *j.Finished
		c.Finished = &t
	}
	return &c
}

// HashSpec is the request fingerprint idempotency compares.
func HashSpec(typ string, spec []byte) string {
	h := sha256.New()
	h.Write([]byte(typ))
	h.Write([]byte{0})
	h.Write(spec)
	return hex.EncodeToString(h.Sum(nil))
}

var (
	bucketJobs = []byte("jobs")
	bucketKeys = []byte("idempotency")
)

// Store is an open job store. Safe for concurrent use.
type Store struct {
	db     *bolt.DB
	writes chan *write
	wg     sync.WaitGroup
	mu     sync.Mutex // guards counts and closed
	counts map[State]int
	closed bool
}

// write is one pending mutation, applied inside a group transaction.
type write struct {
	fn   func(tx *bolt.Tx) error
	done chan error
}

// Open opens (creating) the store file. sync selects fsync per commit.
// A second daemon on the same file waits at most 2 s for the lock and
// then fails.
func Open(path string, sync bool) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("job store: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, NoSync: !sync, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("job store %s: %w (is another npsfused using it?)", path, err)
	}
	s := &Store{db: db, writes: make(chan *write, 1024), counts: map[State]int{}}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketJobs, bucketKeys} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketJobs).ForEach(func(_, v []byte) error {
			var j Job
			if err := json.Unmarshal(v, &j); err != nil {
				return fmt.Errorf("corrupt job record: %w", err)
			}
			s.counts[j.State]++
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("job store %s: %w", path, err)
	}
	s.wg.Add(1)
	go s.commitLoop()
	return s, nil
}

// Close stops the writer and closes the file. Pending writes finish first.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.writes)
	s.mu.Unlock()
	s.wg.Wait()
	return s.db.Close()
}

// commitLoop applies every pending write in one transaction per round.
func (s *Store) commitLoop() {
	defer s.wg.Done()
	for w := range s.writes {
		batch := []*write{w}
	more:
		for len(batch) < 4096 {
			select {
			case w2, ok := <-s.writes:
				if !ok {
					break more
				}
				batch = append(batch, w2)
			default:
				break more
			}
		}
		err := s.db.Update(func(tx *bolt.Tx) error {
			for _, w := range batch {
				if err := w.fn(tx); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil || len(batch) == 1 {
			for _, w := range batch {
				w.done <- err
			}
			continue
		}
		// One write failed and rolled the group back: redo each alone, so
		// that only the failing one reports its error.
		for _, w := range batch {
			w.done <- s.db.Update(w.fn)
		}
	}
}

// apply runs fn in the next group transaction and waits for the commit.
// fn may run more than once (after a rollback), so it must derive
// everything it writes from tx.
func (s *Store) apply(fn func(tx *bolt.Tx) error) error {
	w := &write{fn: fn, done: make(chan error, 1)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.writes <- w
	s.mu.Unlock()
	return <-w.done
}

func key(id uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], id)
	return k[:]
}

func getJob(tx *bolt.Tx, id uint64) (*Job, error) {
	v := tx.Bucket(bucketJobs).Get(key(id))
	if v == nil {
		return nil, fmt.Errorf("%w: %d", ErrNotFound, id)
	}
	var j Job
	if err := json.Unmarshal(v, &j); err != nil {
		return nil, fmt.Errorf("job %d: corrupt record: %w", id, err)
	}
	return &j, nil
}

// Submit stores a new queued job (j's ID, State and Submitted are set
// here, and SpecHash when empty) and returns it. With an idempotency key already used for
// the same request it returns the stored job and existed = true.
func (s *Store) Submit(j *Job) (stored *Job, existed bool, err error) {
	out, ex, err := s.SubmitMany([]*Job{j})
	if err != nil {
		return nil, false, err
	}
	return out[0], ex[0], nil
}

// SubmitMany stores several new queued jobs in one transaction (one
// commit, one fsync): all of them or, on error, none. Each job is handled
// as by Submit; existed[i] reports a job found by its idempotency key
// (also when an earlier job of the same call used that key).
func (s *Store) SubmitMany(list []*Job) (stored []*Job, existed []bool, err error) {
	now := time.Now().UTC()
	in := make([]*Job, len(list))
	for i, j := range list {
		c := j.Clone()
		if c.SpecHash == "" {
			c.SpecHash = HashSpec(c.Type, c.Spec)
		}
		c.State, c.Submitted = Queued, now
		in[i] = c
	}
	stored, existed = make([]*Job, len(in)), make([]bool, len(in))
	added := 0
	err = s.apply(func(tx *bolt.Tx) error {
		added = 0
		for i, j := range in {
			old, err := submitTx(tx, j)
			if err != nil {
				return err
			}
			if old != nil {
				stored[i], existed[i] = old, true
				continue
			}
			stored[i], existed[i] = j, false
			added++
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if added > 0 {
		s.mu.Lock()
		s.counts[Queued] += added
		s.mu.Unlock()
	}
	for i := range stored {
		stored[i] = stored[i].Clone()
	}
	return stored, existed, nil
}

// submitTx stores j (setting its ID) unless its idempotency key is taken:
// then it returns the job that holds the key (ErrKeyReused if that job's
// request differs).
func submitTx(tx *bolt.Tx, j *Job) (*Job, error) {
	keys := tx.Bucket(bucketKeys)
	if j.Key != "" {
		if v := keys.Get([]byte(j.Key)); v != nil {
			old, err := getJob(tx, binary.BigEndian.Uint64(v))
			if err != nil {
				return nil, err
			}
			if old.SpecHash != j.SpecHash {
				return nil, fmt.Errorf("%w: key %q belongs to job %d (%s)", ErrKeyReused, j.Key, old.ID, old.Type)
			}
			return old, nil
		}
	}
	jobs := tx.Bucket(bucketJobs)
	id, err := jobs.NextSequence()
	if err != nil {
		return nil, err
	}
	j.ID = id
	raw, err := json.Marshal(j)
	if err != nil {
		return nil, err
	}
	if err := jobs.Put(key(id), raw); err != nil {
		return nil, err
	}
	if j.Key != "" {
		if err := keys.Put([]byte(j.Key), key(id)); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

func (s *Store) count(from *State, to State) {
	s.mu.Lock()
	if from != nil {
		s.counts[*from]--
	}
	s.counts[to]++
	s.mu.Unlock()
}

// Get returns a copy of job id (ErrNotFound if there is none).
func (s *Store) Get(id uint64) (*Job, error) {
	var j *Job
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		j, err = getJob(tx, id)
		return err
	})
	return j, err
}

// ByKey returns the job submitted with idempotency key k (ErrNotFound if
// none).
func (s *Store) ByKey(k string) (*Job, error) {
	var j *Job
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketKeys).Get([]byte(k))
		if v == nil {
			return fmt.Errorf("%w: idempotency key %q", ErrNotFound, k)
		}
		var err error
		j, err = getJob(tx, binary.BigEndian.Uint64(v))
		return err
	})
	return j, err
}

// Update applies fn to a copy of job id and stores the result. A change
// of state must be allowed by CanTransition (ErrTransition otherwise);
// entering running stamps Started, entering a final state Finished. If
// fn returns an error nothing is stored.
func (s *Store) Update(id uint64, fn func(j *Job) error) (*Job, error) {
	var out *Job
	var from State
	err := s.apply(func(tx *bolt.Tx) error {
		old, err := getJob(tx, id)
		if err != nil {
			return err
		}
		j := old.Clone()
		if err := fn(j); err != nil {
			return err
		}
		j.ID, j.Type, j.Spec, j.Key, j.SpecHash, j.Submitted = old.ID, old.Type, old.Spec, old.Key, old.SpecHash, old.Submitted
		if j.State != old.State {
			if !CanTransition(old.State, j.State) {
				return fmt.Errorf("%w: job %d cannot go from %s to %s", ErrTransition, id, old.State, j.State)
			}
			now := time.Now().UTC()
			if j.State == Running {
				j.Started = &now
			}
			if j.State.Final() {
				j.Finished = &now
			}
		}
		raw, err := json.Marshal(j)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketJobs).Put(key(id), raw); err != nil {
			return err
		}
		out, from = j, old.State
		return nil
	})
	if err != nil {
		return nil, err
	}
	if from != out.State {
		s.count(&from, out.State)
	}
	return out.Clone(), nil
}

// Delete removes a job in a final state, and its idempotency key.
func (s *Store) Delete(id uint64) error {
	var st State
	err := s.apply(func(tx *bolt.Tx) error {
		j, err := getJob(tx, id)
		if err != nil {
			return err
		}
		if !j.State.Final() {
			return fmt.Errorf("%w: job %d is %s; cancel it first", ErrTransition, id, j.State)
		}
		if err := tx.Bucket(bucketJobs).Delete(key(id)); err != nil {
			return err
		}
		if j.Key != "" {
			if err := tx.Bucket(bucketKeys).Delete([]byte(j.Key)); err != nil {
				return err
			}
		}
		st = j.State
		return nil
	})
	if err == nil {
		s.mu.Lock()
		s.counts[st]--
		s.mu.Unlock()
	}
	return err
}

// Filter selects jobs for List: any of States (all if empty), of Type (all
// if ""), with ID > After, at most Limit (all if ≤ 0), in ID order.
type Filter struct {
	States []State
	Type   string
	After  uint64
	Limit  int
}

func (f Filter) match(j *Job) bool {
	if f.Type != "" && j.Type != f.Type {
		return false
	}
	if len(f.States) == 0 {
		return true
	}
	for _, s := range f.States {
		if j.State == s {
			return true
		}
	}
	return false
}

// List returns copies of the jobs f selects, oldest first.
func (s *Store) List(f Filter) ([]*Job, error) {
	var out []*Job
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketJobs).Cursor()
		for k, v := c.Seek(key(f.After + 1)); k != nil; k, v = c.Next() {
			var j Job
			if err := json.Unmarshal(v, &j); err != nil {
				return fmt.Errorf("job %d: corrupt record: %w", binary.BigEndian.Uint64(k), err)
			}
			if f.match(&j) {
				out = append(out, &j)
				if f.Limit > 0 && len(out) >= f.Limit {
					break
				}
			}
		}
		return nil
	})
	return out, err
}

// Counts returns how many jobs are in each state (kept in memory: O(1)).
func (s *Store) Counts() map[State]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[State]int, len(States))
	for _, st := range States {
		out[st] = s.counts[st]
	}
	return out
}
