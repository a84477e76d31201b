package nriplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
)

// Conn says how to reach the runtime's NRI socket and what to do when the
// connection is lost.
type Conn struct {
	Socket string // --nri-socket
	Name   string // --plugin-name
	Index  string // --plugin-idx, two digits: the order among NRI plugins
	// FailRequest asks the runtime to fail a request this plugin did not
	// answer in time, instead of running the container without it.
	FailRequest bool
	// MinBackoff and MaxBackoff bound the wait between connection attempts
	// (defaults 500ms and 30s).
	MinBackoff, MaxBackoff time.Duration
	// Dial, if set, replaces the plain unix-socket dial (tests).
	Dial func(socket string) (net.Conn, error)
	// Connected, if set, is called with true after each registration and
	// false when the connection ends (for health and metrics).
	Connected func(bool)
}

// Run keeps the plugin registered with the runtime until ctx ends.
//
// A lost connection (containerd restarted or upgraded, the socket not there
// yet at boot) is retried with exponential backoff rather than exiting: the
// same process keeps reading the audit ring buffer and serving metrics while
// the runtime is away, and the Synchronize that NRI sends on every new
// registration reconciles whatever happened in between. Containers started
// while no podscope-nri was registered run unaudited until then; docs/podscope-nri.md
// says how to make containerd refuse them instead (required_plugins).
//
// Each attempt uses a new stub: after a failed Start the stub keeps its
// dead connection and would reuse it.
func (p *Plugin) Run(ctx context.Context, c Conn) error {
	if c.MinBackoff <= 0 {
		c.MinBackoff = 500 * time.Millisecond
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = 30 * time.Second
	}
	if c.Connected == nil {
		c.Connected = func(bool) {}
	}
	backoff := c.MinBackoff
	for {
		opts := []stub.Option{
			stub.WithPluginName(c.Name),
			stub.WithPluginIdx(c.Index),
			stub.WithSocketPath(c.Socket),
			stub.WithLogger(nriLogger{p.log.With("component", "nri-stub")}),
			// KeepConnected: one slow answer (a loaded node) must not get
			// the plugin unregistered, which would leave every container
			// started until the reconnect unaudited. Runtimes whose NRI
			// predates failure policies ignore this.
			stub.WithFailurePolicy(&api.FailurePolicy{FailRequest: c.FailRequest, KeepConnected: true}),
			stub.WithOnClose(func() {
				p.log.Warn("connection to the runtime's NRI socket lost", "socket", c.Socket)
			}),
		}
		if c.Dial != nil {
			opts = append(opts, stub.WithDialer(c.Dial))
		}
		st, err := stub.New(p, opts...)
		if err != nil {
			// Bad name or index: retrying cannot help.
			return fmt.Errorf("creating NRI stub: %w", err)
		}
		start := time.Now()
		err = p.runOnce(ctx, st, c.Connected)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errResync) {
			p.log.Info("re-registering with the runtime for a full resync")
			backoff = c.MinBackoff
			continue
		}
		if time.Since(start) > 2*c.MaxBackoff {
			backoff = c.MinBackoff // it was a healthy connection, not a crash loop
		}
		p.log.Warn("not registered with the runtime; retrying", "socket", c.Socket, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, c.MaxBackoff)
	}
}

var errResync = errors.New("resync requested")

// Resync makes Run drop the connection and register again, so the runtime
// sends a fresh Synchronize with every pod and container: the daemon asks
// for it when the audit becomes available after having failed to load, to
// arm what started in the meantime. NRI has no "send me the state again"
// request; re-registration is how a plugin gets it.
func (p *Plugin) Resync() {
	select {
	case p.resync <- struct{}{}:
	default: // one is pending already
	}
}

// runOnce registers and serves until the connection ends or a resync is
// requested.
func (p *Plugin) runOnce(ctx context.Context, st stub.Stub, connected func(bool)) error {
	// A resync asked for before this registration is served by its
	// Synchronize.
	select {
	case <-p.resync:
	default:
	}
	if err := st.Start(ctx); err != nil {
		return err
	}
	connected(true)
	defer connected(false)
	done := make(chan struct{})
	go func() {
		st.Wait()
		close(done)
	}()
	select {
	case <-ctx.Done():
		st.Stop()
		<-done
		return ctx.Err()
	case <-p.resync:
		st.Stop()
		<-done
		return errResync
	case <-done:
		return errors.New("connection closed by the runtime")
	}
}

// nriLogger sends the stub's messages to slog.
type nriLogger struct{ l *slog.Logger }

func (n nriLogger) Debugf(ctx context.Context, f string, a ...any) {
	n.l.DebugContext(ctx, fmt.Sprintf(f, a...))
}
func (n nriLogger) Infof(ctx context.Context, f string, a ...any) {
	n.l.InfoContext(ctx, fmt.Sprintf(f, a...))
}
func (n nriLogger) Warnf(ctx context.Context, f string, a ...any) {
	n.l.WarnContext(ctx, fmt.Sprintf(f, a...))
}
func (n nriLogger) Errorf(ctx context.Context, f string, a ...any) {
	n.l.ErrorContext(ctx, fmt.Sprintf(f, a...))
}
