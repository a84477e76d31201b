// Package ctl is podscopectl: commands that read podscope's pins (and the
// audit log) and print a table for people or JSON for scripts. It never
// needs another podscope process to be running.
package ctl

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/podscope/podscope/pkg/audit"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/podstate"
)

// DefaultNRISocket is containerd's NRI socket.
const DefaultNRISocket = "/var/run/nri/nri.sock"

const usage = `podscopectl — inspect podscope on this node (reads the bpffs pins only)

Usage:
  podscopectl status   [--nri-socket PATH]
  podscopectl pods
  podscopectl flows    --pod NS/NAME
  podscopectl policy show NS/NAME
  podscopectl audit    [--follow] [--pod NS/NAME] [--log PATH]
  podscopectl cleanup  [--state-dir DIR]

Every command takes -o table|json and --bpffs-root PATH (default ` + pins.DefaultRoot + `).
`

// common are the flags every command has.
type common struct {
	output string
	root   string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.output, "o", "table", "output format: table or json")
	fs.StringVar(&c.root, "bpffs-root", pins.DefaultRoot, "podscope bpffs root")
}

func (c *common) validate() error {
	if c.output != "table" && c.output != "json" {
		return fmt.Errorf("-o %q: use -o table or -o json", c.output)
	}
	return nil
}

func (c *common) pinsRoot() pins.Root { return pins.New(c.root) }

// errUsage marks errors that should print the usage text.
var errUsage = errors.New("usage")

// Main runs podscopectl with args (without the program name) and returns
// the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if err := run(args, stdout, stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "podscopectl:", err)
		if errors.Is(err, errUsage) {
			fmt.Fprint(stderr, usage)
		}
		return 1
	}
	return 0
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command given", errUsage)
	}
	cmd, rest := args[0], args[1:]
	var c common
	fs := flag.NewFlagSet("podscopectl "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.register(fs)
	switch cmd {
	case "status":
		sock := fs.String("nri-socket", DefaultNRISocket, "NRI socket of the container runtime")
		if err := parse(fs, &c, rest, 0); err != nil {
			return err
		}
		st, err := gatherStatus(c.pinsRoot(), *sock)
		if err != nil {
			return err
		}
		return emit(stdout, c.output, st, func(w io.Writer) error { return printStatus(w, st) })
	case "pods":
		if err := parse(fs, &c, rest, 0); err != nil {
			return err
		}
		rows, err := gatherPods(c.pinsRoot())
		if err != nil {
			return err
		}
		return emit(stdout, c.output, rows, func(w io.Writer) error { return printPods(w, rows) })
	case "flows":
		podRef := fs.String("pod", "", "pod as NS/NAME (or container ID)")
		if err := parse(fs, &c, rest, 0); err != nil {
			return err
		}
		if *podRef == "" {
			return fmt.Errorf("%w: flows needs --pod NS/NAME (list pods with `podscopectl pods`)", errUsage)
		}
		rows, err := gatherFlows(c.pinsRoot(), *podRef)
		if err != nil {
			return err
		}
		return emit(stdout, c.output, rows, func(w io.Writer) error { return printFlows(w, rows) })
	case "policy":
		if len(rest) == 0 || rest[0] != "show" {
			return fmt.Errorf("%w: policy has one subcommand: policy show NS/NAME", errUsage)
		}
		if err := parse(fs, &c, rest[1:], 1); err != nil {
			return err
		}
		pp, err := gatherPolicy(c.pinsRoot(), fs.Arg(0))
		if err != nil {
			return err
		}
		return emit(stdout, c.output, pp, func(w io.Writer) error { return printPolicy(w, pp) })
	case "audit":
		follow := fs.Bool("follow", false, "keep reading new events as they are written")
		podRef := fs.String("pod", "", "only events of this pod (NS/NAME)")
		logPath := fs.String("log", audit.DefaultLogPath, "audit log written by podscope-nri")
		if err := parse(fs, &c, rest, 0); err != nil {
			return err
		}
		return runAudit(stdout, auditOpts{path: *logPath, pod: *podRef, follow: *follow, json: c.output == "json"})
	case "cleanup":
		stateDir := fs.String("state-dir", podstate.DefaultDir, "podscope state dir (its accounting.jsonl gets the final counters)")
		if err := parse(fs, &c, rest, 0); err != nil {
			return err
		}
		rep, err := cleanup(c.pinsRoot(), *stateDir)
		if err != nil {
			return err
		}
		return emit(stdout, c.output, rep, func(w io.Writer) error { return printCleanup(w, rep) })
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
}

// parse parses flags (allowing them before or after positional arguments)
// and checks the number of positional arguments.
func parse(fs *flag.FlagSet, c *common, args []string, positional int) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != positional {
		if positional == 0 {
			return fmt.Errorf("%w: unexpected argument %q", errUsage, pos[0])
		}
		return fmt.Errorf("%w: %s needs %d argument(s), got %d", errUsage, fs.Name(), positional, len(pos))
	}
	// Re-parse an empty list so fs.Arg(i) returns the positionals.
	if err := fs.Parse(append([]string{"--"}, pos...)); err != nil {
		return err
	}
	return c.validate()
}

func emit(w io.Writer, format string, v any, table func(io.Writer) error) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	return table(w)
}

// splitRef splits NS/NAME; a ref without a slash is a container ID.
func splitRef(ref string) (ns, name string, ok bool) {
	ns, name, ok = strings.Cut(ref, "/")
	return
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
