package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/npsfuse/npsfuse/daemon/jobs"
	"github.com/npsfuse/npsfuse/daemon/store"
)

// metrics are the daemon's Prometheus series, on a registry of its own.
type metrics struct {
	reg          *prometheus.Registry
	submitted    *prometheus.CounterVec
	bytesIn      *prometheus.CounterVec
	bytesOut     *prometheus.CounterVec
	kernel       *prometheus.CounterVec
	jobSeconds   *prometheus.HistogramVec
	authFailures *prometheus.CounterVec
	rpcs         *prometheus.CounterVec
	rpcSeconds   *prometheus.HistogramVec
	removed      *prometheus.CounterVec
	resultBytes  prometheus.Gauge
}

// stateCollector reports jobs by state from the store's counters.
type stateCollector struct {
	st   *store.Store
	desc *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (c stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector: one gauge per state.
func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	for st, n := range c.st.Counts() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), string(st))
	}
}

func newMetrics(st *store.Store, r *jobs.Runner, budget *jobs.Budget, total int64) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		submitted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "npsfused_jobs_submitted_total",
			Help: "Jobs accepted by submit (idempotent retries not counted), by type."}, []string{"type"}),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "npsfused_bytes_in_total",
			Help: "Tensor bytes received from clients, by transport (flight, shm)."}, []string{"transport"}),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "npsfused_bytes_out_total",
			Help: "Tensor bytes sent to clients, by transport (flight, shm)."}, []string{"transport"}),
		kernel: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "npsfused_kernel_seconds_total",
			Help: "Wall-clock seconds jobs spent running (kernels and I/O), by job type."}, []string{"type"}),
		jobSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "npsfused_job_run_seconds",
			Help: "Run time of each job, by type.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 12)}, []string{"type"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "npsfused_auth_failures_total",
			Help: "Calls refused as UNAUTHENTICATED, by reason (missing, invalid)."}, []string{"reason"}),
		rpcs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "npsfused_rpc_total",
			Help: "Flight calls by method (and action) and gRPC status code."}, []string{"method", "code"}),
		rpcSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "npsfused_rpc_seconds",
			Help: "Flight call latency by method.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 12)}, []string{"method"}),
	}
	m.removed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "npsfused_retention_removed_total",
		Help: "What the retention policy removed: finished jobs, their result bytes, idle sessions expired."}, []string{"what"})
	m.resultBytes = prometheus.NewGauge(prometheus.GaugeOpts{Name: "npsfused_result_bytes",
		Help: "Bytes of result files of finished jobs, as of the last retention sweep."})
	for _, w := range []string{"jobs", "bytes", "sessions"} {
		m.removed.WithLabelValues(w)
	}
	reg.MustRegister(m.removed, m.resultBytes, m.submitted, m.bytesIn, m.bytesOut, m.kernel, m.jobSeconds, m.authFailures, m.rpcs, m.rpcSeconds,
		stateCollector{st: st, desc: prometheus.NewDesc("npsfused_jobs", "Jobs in the store, by state.", []string{"state"}, nil)},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "npsfused_queue_depth", Help: "Jobs waiting for a worker."},
			func() float64 { return float64(r.QueueDepth()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "npsfused_jobs_active", Help: "Batch jobs running now."},
			func() float64 { n, _ := r.Running(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "npsfused_sessions_open", Help: "Interactive sessions ready for ask/tell."},
			func() float64 { _, n := r.Running(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "npsfused_memory_reserved_bytes", Help: "Working memory reserved by jobs."},
			func() float64 { return float64(budget.Used()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "npsfused_memory_budget_bytes", Help: "The configured memory_budget."},
			func() float64 { return float64(total) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// Pre-create the label values clients and dashboards look for.
	for _, t := range jobs.Types() {
		m.submitted.WithLabelValues(t)
		m.kernel.WithLabelValues(t)
	}
	for _, tr := range []string{"flight", "shm"} {
		m.bytesIn.WithLabelValues(tr)
		m.bytesOut.WithLabelValues(tr)
	}
	for _, r := range []string{"missing", "invalid"} {
		m.authFailures.WithLabelValues(r)
	}
	return m
}

// swept records one retention sweep.
func (m *metrics) swept(s jobs.Swept) {
	m.removed.WithLabelValues("jobs").Add(float64(s.Jobs))
	m.removed.WithLabelValues("bytes").Add(float64(s.Bytes))
	m.removed.WithLabelValues("sessions").Add(float64(s.Sessions))
	m.resultBytes.Set(float64(s.ResultBytes))
}
