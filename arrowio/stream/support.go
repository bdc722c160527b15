package stream

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

func mustTensorDType(d safetensors.DType) tensor.DType {
	t, ok := checkpoint.KernelDType(d)
	if !ok {
		panic(fmt.Sprintf("stream: %v is not a float dtype", d))
	}
	return t
}

// writer stores finished tensors into their shards on its own goroutine
// (writes behind), and recycles output buffers.
type writer struct {
	dir     string
	shards  []checkpoint.Shard
	shardOf map[string]int
	left    []int // tensors still to write, per shard
	open    []*safetensors.Writer
	meta    map[string]string
	queue   chan item
	free    chan []byte
	done    chan struct{}
	mu      sync.Mutex
	err     error
	busy    time.Duration // time spent in write (read by the loop's owner after done)
	sync    time.Duration // of which closing shards (fsync, rename)
}

type item struct {
	name string
	buf  []byte
}

// pending bounds how many finished tensors wait for the writer.
const pending = 2

func newWriter(dir string, shards []checkpoint.Shard, cfg *Config, dt tensor.DType) *writer {
	w := &writer{dir: dir, shards: shards, shardOf: map[string]int{}, queue: make(chan item, pending),
		free: make(chan []byte, pending+2), done: make(chan struct{}), open: make([]*safetensors.Writer, len(shards)),
		meta: map[string]string{"format": "pt", "merged_with": "npsfuse", "merge_method": cfg.Method}}
	for i, s := range shards {
		w.left = append(w.left, len(s.Tensors))
		for _, t := range s.Tensors {
			w.shardOf[t.Name] = i
		}
	}
	go w.loop()
	return w
}

func (w *writer) loop() {
	defer close(w.done)
	for it := range w.queue {
		if w.failed() == nil {
			t := time.Now()
			w.setErr(w.write(it))
			w.busy += time.Since(t)
		}
		select {
		case w.free <- it.buf:
		default:
		}
	}
}

func (w *writer) write(it item) error {
	s := w.shardOf[it.name]
	if w.open[s] == nil {
		sw, err := safetensors.NewWriter(filepath.Join(w.dir, w.shards[s].File), w.shards[s].Tensors, w.meta)
		if err != nil {
			return err
		}
		if !bufferedWrites() {
			// The tensors arrive in layout order: written from an aligned
			// buffer with O_DIRECT where the filesystem takes it.
			sw.Direct()
		}
		w.open[s] = sw
	}
	if err := w.open[s].WriteTensor(it.name, it.buf); err != nil {
		return err
	}
	w.left[s]--
	if w.left[s] == 0 {
		t := time.Now()
		err := w.open[s].Close()
		w.sync += time.Since(t)
		w.open[s] = nil
		return err
	}
	return nil
}

func (w *writer) setErr(err error) {
	if err == nil {
		return
	}
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

func (w *writer) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// buffer returns a buffer of n bytes, reusing one the writer has finished with.
func (w *writer) buffer(n int64) []byte {
	select {
	case b := <-w.free:
		if int64(cap(b)) >= n {
			return b[:n]
		}
	default:
	}
	return make([]byte, n)
}

// put queues a finished tensor; it reports an earlier write error.
func (w *writer) put(name string, buf []byte) error {
	if err := w.failed(); err != nil {
		return err
	}
	w.queue <- item{name, buf}
	return nil
}

// finish waits for all writes and closes the shards.
func (w *writer) finish() error {
	close(w.queue)
	<-w.done
	w.queue = nil
	return w.failed()
}

// abort stops the writer (if finish did not run) and removes partial shards.
func (w *writer) abort() {
	if w.queue != nil {
		close(w.queue)
		<-w.done
		w.queue = nil
	}
	for _, sw := range w.open {
		if sw != nil {
			_ = sw.Abort()
		}
	}
}

// progress draws "tensors done, bytes/s, ETA" on one terminal line.
type progress struct {
	out          io.Writer
	n, i         int
	total, bytes int64
	start, last  time.Time
}

func newProgress(out io.Writer, n int, total int64) *progress {
	return &progress{out: out, n: n, total: total, start: time.Now()}
}

func (p *progress) step(b int64) {
	p.i++
	p.bytes += b
	if p.out == nil || (time.Since(p.last) < 100*time.Millisecond && p.i < p.n) {
		return
	}
	p.last = time.Now()
	el := time.Since(p.start).Seconds()
	rate := float64(p.bytes) / max(el, 1e-9)
	eta := "?"
	if rate > 0 {
		eta = time.Duration(float64(p.total-p.bytes) / rate * float64(time.Second)).Round(time.Second).String()
	}
	fmt.Fprintf(p.out, "\rmerging %d/%d tensors  %s/s  ETA %s   ", p.i, p.n, human(rate), eta)
}

func (p *progress) done() {
	if p.out != nil {
		fmt.Fprintf(p.out, "\rmerged %d tensors (%s) in %.1fs%s\n", p.n, human(float64(p.total)), time.Since(p.start).Seconds(), strings.Repeat(" ", 20))
	}
}

func human(b float64) string {
	units := []string{"B", "kB", "MB", "GB", "TB"}
	i := 0
	for b >= 1000 && i < len(units)-1 {
		b /= 1000
		i++
	}
	return fmt.Sprintf("%.1f %s", b, units[i])
}

// writeCard writes a short README.md model card with the configuration.
func writeCard(dir string, cfg *Config, dt tensor.DType) error {
	type model struct {
		Model      string         `yaml:"model"`
		Parameters map[string]any `yaml:"parameters,omitempty"`
	}
	doc := map[string]any{"merge_method": cfg.Method}
	if len(cfg.Parameters) > 0 {
		doc["parameters"] = cfg.Parameters
	}
	if cfg.BaseModel != "" {
		doc["base_model"] = cfg.BaseModel
	}
	if dt != 0 {
		doc["out_dtype"] = dt.String()
	}
	var ms []model
	for _, m := range cfg.Models {
		ms = append(ms, model{m.Path, m.Parameters})
	}
	doc["models"] = ms
	if len(cfg.Slices) > 0 {
		delete(doc, "models")
		doc["slices"] = cardSlices(cfg)
	}
	y, err := yaml.Marshal(doc)
	if err != nil {
		return err
	}
	card := fmt.Sprintf("---\ntags:\n- merge\n- npsfuse\n---\n# Merged model\n\nThis model was merged with [npsfuse](https://pypi.org/project/npsfuse/) using the `%s` method.\n\n## Configuration\n\n```yaml\n%s```\n", cfg.Method, y)
	return os.WriteFile(filepath.Join(dir, "README.md"), []byte(card), 0o644)
}

// bufferedWrites reports whether NPSFUSE_BUFFERED_WRITE=1 asks for the
// output to be written through the page cache (the default writes it with
// O_DIRECT where it can: safetensors.Writer.Direct).
func bufferedWrites() bool { return os.Getenv("NPSFUSE_BUFFERED_WRITE") == "1" }
