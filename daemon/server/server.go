package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/apache/arrow/go/v15/arrow/flight"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"

	"github.com/npsfuse/npsfuse/daemon/config"
	"github.com/npsfuse/npsfuse/daemon/jobs"
	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// slabAge is how long a recycled shared-memory slab may stay unused.
const slabAge = 10 * time.Minute

// Run serves until ctx ends, then drains and returns. Errors are start-up
// failures (a bad listener, a locked store) or a failing listener.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	shm := ""
	if cfg.ShmDir != "" {
		if err := os.MkdirAll(cfg.ShmDir, 0o700); err != nil {
			return fmt.Errorf("shm_dir: %w", err)
		}
		var err error
		if shm, err = filepath.EvalSymlinks(cfg.ShmDir); err != nil {
			return fmt.Errorf("shm_dir: %w", err)
		}
		if err := config.CheckPrivateDir(shm, "shm_dir", true); err != nil {
			return err
		}
	}
	roots, err := config.NewRoots(append(append([]string(nil), cfg.DataRoots...), shm)...)
	if err != nil {
		return err
	}
	st, err := store.Open(cfg.Store, cfg.StoreSync)
	if err != nil {
		return err
	}
	defer st.Close()
	var m *metrics
	env := &jobs.Env{Roots: roots, Uploads: cfg.Uploads, Results: cfg.Results, ShmDir: shm, Store: cfg.Store, Durable: cfg.StoreSync, Log: log,
		Pool: parallel.Pool{Threads: cfg.Threads}, Python: cfg.Python,
		KernelSeconds: func(t string, s float64) {
			m.kernel.WithLabelValues(t).Add(s)
			m.jobSeconds.WithLabelValues(t).Observe(s)
		},
		BytesIn:  func(tr string, n int64) { m.bytesIn.WithLabelValues(tr).Add(float64(n)) },
		BytesOut: func(tr string, n int64) { m.bytesOut.WithLabelValues(tr).Add(float64(n)) },
	}
	if err := env.Prepare(); err != nil {
		return err
	}
	budget := jobs.NewBudget(cfg.MemoryBudget)
	runner := jobs.NewRunner(env, st, budget, cfg.Workers)
	m = newMetrics(st, runner, budget, cfg.MemoryBudget)
	if err := runner.Recover(); err != nil {
		return fmt.Errorf("recovering jobs: %w", err)
	}

	var httpSrv *http.Server
	metricsAddr := ""
	if cfg.MetricsListen != "" {
		ln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("metrics_listen %s: %w", cfg.MetricsListen, err)
		}
		metricsAddr = ln.Addr().String()
		if !loopback(cfg.MetricsListen) {
			log.Warn("metrics_listen is reachable from other hosts and has no authentication: anyone who can connect reads /metrics (job counts, types, sizes) and /healthz; bind it to 127.0.0.1 or firewall it",
				"metrics_listen", cfg.MetricsListen)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if runner.Draining() {
				http.Error(w, "draining\n", http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		})
		httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics listener failed", "error", err)
			}
		}()
	}

	lis, cleanup, err := listen(cfg.Listen)
	if err != nil {
		if httpSrv != nil {
			_ = httpSrv.Close()
		}
		return err
	}
	defer cleanup()
	unix := cfg.Listen.Network == "unix"
	auth := &authenticator{optional: unix, failed: func(r string) { m.authFailures.WithLabelValues(r).Inc() }}
	for _, t := range cfg.Tokens {
		auth.tokens = append(auth.tokens, []byte(t))
	}
	obs := func(method string, code codes.Code, secs float64) {
		m.rpcs.WithLabelValues(method, code.String()).Inc()
		m.rpcSeconds.WithLabelValues(method).Observe(secs)
	}
	gs := grpc.NewServer(
		grpc.MaxRecvMsgSize(int(cfg.MaxMessageBytes)),
		grpc.MaxSendMsgSize(int(cfg.MaxMessageBytes)),
		grpc.ChainUnaryInterceptor(auth.unary(obs), recoverUnary(log)),
		grpc.ChainStreamInterceptor(auth.stream(obs), recoverStream(log)),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.InitialWindowSize(8<<20), grpc.InitialConnWindowSize(16<<20),
		grpc.ReadBufferSize(1<<20), grpc.WriteBufferSize(1<<20),
	)
	svc := &service{cfg: cfg, env: env, runner: runner, metrics: m, log: log, unix: unix, uploading: map[string]bool{}}
	flight.RegisterFlightServiceServer(gs, svc)
	runner.Start()
	gcDone := make(chan struct{})
	gcStop := make(chan struct{})
	go func() { // recycled shared-memory slabs whose client went away
		defer close(gcDone)
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-gcStop:
				return
			case <-t.C:
				if n := env.CollectSlabs(slabAge); n > 0 {
					log.Info("removed unused shared-memory slabs", "count", n)
				}
			}
		}
	}()
	defer func() {
		close(gcStop)
		<-gcDone
	}()
	retCtx, retStop := context.WithCancel(ctx)
	// finished jobs, results and idle sessions past the retention policy:
	// swept once before the listener serves, then every sweepEvery
	retDone := runner.StartRetention(retCtx, jobs.Retention{MaxAge: cfg.RetentionAge, MaxJobs: cfg.RetentionJobs,
		MaxResultBytes: cfg.RetentionBytes, SessionIdle: cfg.SessionIdleTimeout}, sweepEvery, m.swept)
	defer func() {
		retStop()
		<-retDone
	}()
	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(lis) }()
	counts := st.Counts()
	log.Info("npsfused ready", "listen", cfg.Listen.String(), "metrics", metricsAddr, "shm_dir", shm,
		"workers", cfg.Workers, "queued", counts[store.Queued], "version", Version, "pid", os.Getpid())

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down: draining", "timeout", cfg.DrainTimeout.String())
	case err := <-serveErr:
		runErr = fmt.Errorf("flight listener: %w", err)
		log.Error("flight listener failed", "error", err)
	}
	dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	runner.Drain(dctx)
	cancel()
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		gs.Stop()
		<-stopped
	}
	if httpSrv != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = httpSrv.Shutdown(sctx)
		scancel()
	}
	log.Info("npsfused stopped")
	return runErr
}

// loopback reports whether a host:port listens on the loopback interface
// only (127.0.0.0/8, ::1 or localhost); "", 0.0.0.0, :: and other hosts
// are reachable from the network.
func loopback(hostPort string) bool {
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// sweepEvery is how often the retention policy is applied (and once at
// start).
const sweepEvery = time.Minute

// listen opens the Flight listener. A Unix socket's folder is created with
// mode 0700 and the socket chmod'ed 0600; a stale socket file (nobody
// answering) is replaced, a live one is an error.
func listen(a config.Address) (net.Listener, func(), error) {
	if a.Network == "tcp" {
		ln, err := net.Listen("tcp", a.Addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listen %s: %w", a, err)
		}
		return ln, func() {}, nil
	}
	if err := os.MkdirAll(filepath.Dir(a.Addr), 0o700); err != nil {
		return nil, nil, fmt.Errorf("listen %s: %w", a, err)
	}
	if err := config.CheckPrivateDir(filepath.Dir(a.Addr), "listen "+a.String()+": the socket's folder", false); err != nil {
		return nil, nil, err
	}
	if _, err := os.Lstat(a.Addr); err == nil {
		if c, err := net.DialTimeout("unix", a.Addr, time.Second); err == nil {
			c.Close()
			return nil, nil, fmt.Errorf("listen %s: another npsfused is serving this socket", a)
		}
		if err := os.Remove(a.Addr); err != nil {
			return nil, nil, fmt.Errorf("listen %s: removing the stale socket: %w", a, err)
		}
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", a.Addr)
	syscall.Umask(old)
	if err != nil {
		return nil, nil, fmt.Errorf("listen %s: %w", a, err)
	}
	if err := os.Chmod(a.Addr, 0o600); err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("listen %s: %w", a, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	return ln, func() { _ = os.Remove(a.Addr) }, nil
}
