// Package ctl is podscopectl: commands that read podscope's pins (and the
// audit log) and print a table for people or JSON for scripts. It never
// needs another podscope process to be running.
package ctl

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/podscope/podscope/pkg/audit"
	"github.com/podscope/podscope/pkg/buildinfo"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/podstate"
)

// DefaultNRISocket is containerd's NRI socket.
const DefaultNRISocket = "/var/run/nri/nri.sock"

// Exit codes of podscopectl, for scripts.
const (
	ExitOK       = 0 // done
	ExitError    = 1 // the command failed (the message says why)
	ExitUsage    = 2 // bad command line: unknown command or flag, wrong arguments
	ExitNoState  = 3 // the bpffs root holds no podscope state (or the audit log is missing)
	ExitNotFound = 4 // the named pod is not attached
)

// exitError is an error that carries podscopectl's exit code for it.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, format string, a ...any) error {
	return &exitError{code: code, err: fmt.Errorf(format, a...)}
}

// usageError is a bad command line (exit 2).
func usageError(format string, a ...any) error { return withCode(ExitUsage, format, a...) }

// noStateError is a bpffs root (or audit log) without podscope state (exit 3).
func noStateError(format string, a ...any) error { return withCode(ExitNoState, format, a...) }

// notAttachedError is a pod reference that matches no attached pod (exit 4).
func notAttachedError(format string, a ...any) error { return withCode(ExitNotFound, format, a...) }

// ExitCode maps an error returned by a command to podscopectl's exit code.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var e *exitError
	if errors.As(err, &e) {
		return e.code
	}
	return ExitError
}

// common are the flags every command has (global flags: before or after
// the command).
type common struct {
	output string
	root   string
}

func (c *common) register(fs *pflag.FlagSet) {
	fs.StringVarP(&c.output, "output", "o", "table", "output format: table or json")
	fs.StringVar(&c.root, "bpffs-root", pins.DefaultRoot, "bpffs directory of podscope's pins")
}

func (c *common) validate() error {
	if c.output != "table" && c.output != "json" {
		return usageError("-o %q: use -o table or -o json", c.output)
	}
	return nil
}

func (c *common) pinsRoot() pins.Root { return pins.New(c.root) }

// Main runs podscopectl with args (without the program name) and returns
// the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	root := NewCommand(stdout, stderr)
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err == nil {
		return ExitOK
	}
	var coded *exitError
	if !ran(cmd) && !errors.As(err, &coded) {
		// cobra's own errors (unknown command or flag, wrong arguments)
		// come before the command ran: all of them are usage errors.
		err = usageError("%v", err)
	}
	fmt.Fprintln(stderr, "podscopectl:", err)
	if ExitCode(err) == ExitUsage {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return ExitCode(err)
}

const ranAnnotation = "podscopectl/ran"

func ran(cmd *cobra.Command) bool { return cmd != nil && cmd.Annotations[ranAnnotation] == "yes" }

// NewCommand builds podscopectl's command tree writing to stdout and stderr.
func NewCommand(stdout, stderr io.Writer) *cobra.Command {
	var c common
	root := &cobra.Command{
		Use:   "podscopectl",
		Short: "inspect podscope on this node",
		Long: `podscopectl inspects podscope on this node: the pods it attached, their
counters, flows and policy, and the file-write audit log. It reads only the
pins under the bpffs root (and the audit log), so it needs no other podscope
process. Run it as root on the node. Output columns are explained in
docs/podscopectl.md.

Exit codes: 0 done, 1 failed, 2 bad command line, 3 no podscope state under
the bpffs root (or no audit log), 4 the named pod is not attached.`,
		Version:           buildinfo.Version,
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: false},
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Annotations == nil {
				cmd.Annotations = map[string]string{}
			}
			cmd.Annotations[ranAnnotation] = "yes"
			return c.validate()
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("podscopectl {{.Version}}\n")
	c.register(root.PersistentFlags())
	_ = root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json"}, cobra.ShellCompDirectiveNoFileComp))
	completePods := func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return podRefs(c.pinsRoot()), cobra.ShellCompDirectiveNoFileComp
	}

	status := &cobra.Command{
		Use:   "status",
		Short: "bpffs root, datapath and audit mode, pinned programs, pods attached, NRI socket",
		Args:  cobra.NoArgs,
	}
	nriSocket := status.Flags().String("nri-socket", DefaultNRISocket, "NRI socket of the container runtime")
	status.RunE = func(*cobra.Command, []string) error {
		st, err := gatherStatus(c.pinsRoot(), *nriSocket)
		if err != nil {
			return err
		}
		if err := emit(stdout, c.output, st, func(w io.Writer) error { return printStatus(w, st) }); err != nil {
			return err
		}
		return checkState(c.pinsRoot())
	}

	podsCmd := &cobra.Command{
		Use:   "pods",
		Short: "every attached pod: interface, host veth, IPs, attach mode, counters, policy drops",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return show(&c, stdout, gatherPods, printPods)
		},
	}

	flows := &cobra.Command{
		Use:   "flows --pod NS/NAME",
		Short: "a pod's flow table: who initiated each flow, its last verdict, bytes and packets each way",
		Args:  cobra.NoArgs,
	}
	flowsPod := flows.Flags().String("pod", "", "pod as NS/NAME (or container ID); required")
	_ = flows.RegisterFlagCompletionFunc("pod", completePods)
	flows.RunE = func(*cobra.Command, []string) error {
		if *flowsPod == "" {
			return usageError("flows needs --pod NS/NAME (list pods with `podscopectl pods`)")
		}
		return show(&c, stdout, func(root pins.Root) (*Flows, error) { return gatherFlows(root, *flowsPod) }, printFlows)
	}

	policyCmd := &cobra.Command{
		Use:   "policy",
		Short: "policy commands (show)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usageError("policy has one subcommand: policy show NS/NAME")
		},
	}
	policyShow := &cobra.Command{
		Use:               "show NS/NAME",
		Short:             "the policy of a pod as the kernel holds it (per prefix: rules in match order, default)",
		Args:              exactArgs(1, "policy show needs the pod as NS/NAME"),
		ValidArgsFunction: completePods,
		RunE: func(_ *cobra.Command, args []string) error {
			return show(&c, stdout, func(root pins.Root) (*PodPolicy, error) { return gatherPolicy(root, args[0]) }, printPolicy)
		},
	}
	policyCmd.AddCommand(policyShow)

	auditCmd := &cobra.Command{
		Use:   "audit",
		Short: "file-write audit events from podscope-nri's log",
		Args:  cobra.NoArgs,
	}
	follow := auditCmd.Flags().BoolP("follow", "f", false, "keep reading new events as they are written")
	auditPod := auditCmd.Flags().String("pod", "", "only events of this pod (NS/NAME, container ID or pod UID)")
	logPath := auditCmd.Flags().String("log", audit.DefaultLogPath, "audit log written by podscope-nri (its --audit-log)")
	_ = auditCmd.RegisterFlagCompletionFunc("pod", completePods)
	auditCmd.RunE = func(*cobra.Command, []string) error {
		return runAudit(stdout, auditOpts{path: *logPath, pod: *auditPod, follow: *follow, json: c.output == "json"})
	}

	cleanupCmd := &cobra.Command{
		Use:   "cleanup",
		Short: "log every attached pod's final counters, then detach and unpin everything",
		Long: `cleanup logs every attached pod's final counters to accounting.jsonl in the
state dir, then detaches and unpins everything podscope pinned (datapath,
audit, pod registry) and removes the bpffs root. Run it in the node's network
namespace. A root that does not exist is already clean (exit 0).`,
		Args: cobra.NoArgs,
	}
	stateDir := cleanupCmd.Flags().String("state-dir", podstate.DefaultDir, "podscope state dir (its accounting.jsonl gets the final counters)")
	cleanupCmd.RunE = func(*cobra.Command, []string) error {
		rep, err := cleanup(c.pinsRoot(), *stateDir)
		if err != nil {
			return err
		}
		return emit(stdout, c.output, rep, func(w io.Writer) error { return printCleanup(w, rep) })
	}

	version := &cobra.Command{
		Use:   "version",
		Short: "print the version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprintln(stdout, buildinfo.String("podscopectl"))
			return err
		},
	}

	root.AddCommand(status, podsCmd, flows, policyCmd, auditCmd, cleanupCmd, version)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError("%v", err) })
	return root
}

func exactArgs(n int, msg string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError("%s (got %d arguments)", msg, len(args))
		}
		return nil
	}
}

// checkState returns a noStateError saying what is missing when the
// bpffs root holds no podscope state: the root does not exist, is not on a
// bpffs, or holds nothing of the current layout.
func checkState(root pins.Root) error {
	hint := fmt.Sprintf("is podscope installed on this node, or is --bpffs-root wrong (default %s)?", pins.DefaultRoot)
	if _, err := os.Stat(root.Path); errors.Is(err, os.ErrNotExist) {
		return noStateError("bpffs root %s does not exist: %s", root.Path, hint)
	}
	if err := pins.CheckBPFFS(root.Path); err != nil {
		return noStateError("%s holds no podscope state: %v", root.Path, err)
	}
	if !fileExists(root.Dir("")) {
		if stale, _ := root.StaleLayouts(); len(stale) > 0 {
			return noStateError("%s holds only pins of another podscope layout (%s; this podscopectl reads %s): use the podscopectl of that version, or remove them with `podscopectl cleanup`",
				root.Path, strings.Join(stale, ", "), pins.LayoutVersion)
		}
		return noStateError("nothing of podscope is pinned under %s: no pod was attached and the CNI plugin never ran on this node, or --bpffs-root is wrong (default %s)",
			root.Path, pins.DefaultRoot)
	}
	return nil
}

// podRefs lists the attached pods' references for shell completion.
func podRefs(root pins.Root) []string {
	reg, err := pods.OpenPinnedRegistry(root)
	if err != nil {
		return nil
	}
	defer reg.Close()
	list, err := reg.List()
	if err != nil {
		return nil
	}
	refs := make([]string, 0, len(list))
	for _, p := range list {
		refs = append(refs, p.Ref())
	}
	sort.Strings(refs)
	return refs
}

// show is the body of a command that reads the pinned state: the root
// must hold podscope state (exit 3 otherwise), then the view is gathered
// and printed as --output asks.
func show[V any](c *common, w io.Writer, gather func(pins.Root) (V, error), table func(io.Writer, V) error) error {
	if err := checkState(c.pinsRoot()); err != nil {
		return err
	}
	v, err := gather(c.pinsRoot())
	if err != nil {
		return err
	}
	return emit(w, c.output, v, func(w io.Writer) error { return table(w, v) })
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
