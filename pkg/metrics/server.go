package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves /metrics from reg and /healthz from health (nil: always
// healthy). A source that fails in a scrape is logged and left out; the
// rest of the scrape is served.
func Handler(reg *prometheus.Registry, health func() error, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	opts := promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}
	if log != nil {
		opts.ErrorLog = slogPrintln{log}
	}
	mux.Handle("/metrics", promhttp.HandlerFor(reg, opts))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if health != nil {
			if err := health(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// Serve listens on addr and serves h until ctx ends; it returns the bound
// address (addr may ask for port 0). The listener is opened before Serve
// returns, so a taken port fails the daemon's start, not a goroutine later.
func Serve(ctx context.Context, addr string, h http.Handler) (bound string, wait func() error, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("metrics listener on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	shutdown := make(chan error, 1)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shutdown <- srv.Shutdown(sctx)
	}()
	return ln.Addr().String(), func() error {
		err := <-done
		if ctx.Err() != nil {
			if serr := <-shutdown; serr != nil {
				err = errors.Join(err, fmt.Errorf("metrics server shutdown: %w", serr))
			}
		}
		return err
	}, nil
}

type slogPrintln struct{ l *slog.Logger }

func (s slogPrintln) Println(v ...any) { s.l.Warn("metrics: " + fmt.Sprint(v...)) }
