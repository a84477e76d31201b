// Command podscope-nri is podscope's node daemon: an NRI plugin that arms
// the file-write audit of every container, writes the audit log and serves
// the Prometheus metrics. See pkg/nriplugin and docs/podscope-nri.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/podscope/podscope/pkg/buildinfo"
	"github.com/podscope/podscope/pkg/nriplugin"
)

func main() {
	f, err := nriplugin.ParseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "podscope-nri:", err)
		os.Exit(2)
	}
	if f.Version {
		fmt.Println(buildinfo.String("podscope-nri"))
		return
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: f.LogLevel}))
	f.Stdout = os.Stdout
	d, err := nriplugin.NewDaemon(f.Options, log)
	if err != nil {
		log.Error("podscope-nri cannot start", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := d.Run(ctx); err != nil {
		log.Error("podscope-nri failed", "err", err)
		os.Exit(1)
	}
}
