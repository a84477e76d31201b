package install

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/podscope/podscope/pkg/buildinfo"
	"github.com/podscope/podscope/pkg/pins"
)

// Main is podscope-install's command line; it returns the exit code.
// validate checks the podscope entry (the CNI plugin's own config parser);
// nil checks only "a JSON object of type podscope".
func Main(args []string, stderr io.Writer, validate func([]byte) error) int {
	fs := flag.NewFlagSet("podscope-install", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		binDir     = fs.String("cni-bin-dir", DefaultCNIBinDir, "CNI plugin binary directory")
		confDir    = fs.String("cni-conf-dir", DefaultCNIConfDir, "CNI network config directory")
		stateDir   = fs.String("state-dir", DefaultStateDir, "where the record of what was changed is kept (uninstall reads it)")
		srcDir     = fs.String("src-dir", "", "directory holding the binaries to copy (default: this executable's directory)")
		configFile = fs.String("config", "", `JSON file holding the podscope conflist entry (default {"type":"podscope"}); re-read by --watch`)
		bins       = fs.String("bin", PluginType, "comma-separated binaries to copy into --cni-bin-dir (empty: none)")
		uninstall  = fs.Bool("uninstall", false, "remove what an earlier install added, then exit")
		watch      = fs.Bool("watch", false, "after installing, keep podscope chained when the primary CNI rewrites its config (until SIGTERM)")
		resync     = fs.Duration("resync", DefaultResync, "with --watch: re-check this often even without a change notification")
		unOnExit   = fs.Bool("uninstall-on-exit", false, "with --watch: uninstall when terminated (SIGTERM/SIGINT)")
		mountBPFFS = fs.String("mount-bpffs", "", "mount a bpffs at this directory if none is there (e.g. /sys/fs/bpf)")
		noVersion  = fs.Bool("skip-version-check", false, "do not ask the podscope plugin whether it supports the conflist's cniVersion")
		waitConfig = fs.Duration("wait-for-config", 0, "without --watch: when the conf dir holds no network config yet, wait up to this long for the primary CNI to write one (0: exit 3 at once)")
		adopt      = fs.Bool("adopt", true, "after chaining, attach podscope to pods already running (from the runtime's CNI result cache)")
		cacheDir   = fs.String("cni-cache-dir", DefaultCNICacheDir, "the runtime's libcni cache, read by --adopt")
		version    = fs.Bool("version", false, "print the version and exit")
	)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "podscope-install: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	logger := log.New(stderr, "podscope-install: ", log.LstdFlags|log.LUTC)
	if *version {
		fmt.Fprintln(stderr, buildinfo.String("podscope-install"))
		return 0
	}
	if *srcDir == "" {
		exe, err := os.Executable()
		if err != nil {
			logger.Printf("finding own executable for --src-dir: %v", err)
			return 1
		}
		*srcDir = filepath.Dir(exe)
	}
	var binaries []string
	for _, b := range strings.Split(*bins, ",") {
		if b = strings.TrimSpace(b); b != "" {
			binaries = append(binaries, b)
		}
	}
	cfg := Config{
		CNIBinDir:     *binDir,
		CNIConfDir:    *confDir,
		StateDir:      *stateDir,
		SrcDir:        *srcDir,
		Binaries:      binaries,
		EntryFile:     *configFile,
		ValidateEntry: validate,
		Logf:          logger.Printf,
	}
	if !*noVersion {
		cfg.SupportedVersions = PluginVersions
	}
	adopted := false
	if *adopt {
		cfg.AfterChain = func(path string) {
			adopted = true
			adoptRunning(path, *cacheDir, logger.Printf)
		}
	}
	in, err := New(cfg)
	if err != nil {
		logger.Print(err)
		return 2
	}
	if *mountBPFFS != "" {
		if err := pins.MountBPFFS(*mountBPFFS); err != nil {
			logger.Print(err)
			return 1
		}
	}
	if *uninstall {
		if err := in.Uninstall(); err != nil {
			logger.Printf("uninstall: %v", err)
			return 1
		}
		logger.Print("uninstalled")
		return 0
	}
	if !*watch {
		install := in.Install
		if *waitConfig > 0 {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, *waitConfig)
			defer cancel()
			install = func() error { return in.InstallWhenReady(ctx) }
		}
		if err := install(); err != nil {
			logger.Print(err)
			if errors.Is(err, ErrNoConfig) {
				return 3 // distinct: "try again later" for scripts and init containers
			}
			return 1
		}
		logger.Printf("podscope is chained into %s", mustActive(*confDir))
		if *adopt && !adopted {
			// Chained already (an earlier run, or by hand): pods may still
			// have started before that, or lost their pins to a cleanup.
			adoptRunning(mustActive(*confDir), *cacheDir, logger.Printf)
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger.Printf("watching %s (inotify, resync every %s)", *confDir, *resync)
	if err := in.Watch(ctx, *resync); err != nil {
		logger.Print(err)
		return 1
	}
	if *unOnExit {
		// A fresh, bounded context is not needed: Uninstall does only
		// local file operations.
		start := time.Now()
		if err := in.Uninstall(); err != nil {
			logger.Printf("uninstall on exit: %v", err)
			return 1
		}
		logger.Printf("uninstalled on exit in %s", time.Since(start).Round(time.Millisecond))
	}
	logger.Print("stopped")
	return 0
}

func mustActive(dir string) string {
	p, err := ActiveConfig(dir)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return p
}
