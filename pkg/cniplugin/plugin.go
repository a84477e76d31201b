package cniplugin

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/fault"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/podstate"
)

// AddReapBudget bounds an ADD-time reap (at most every
// podstate.AddReapInterval, of podstate.AddReapSlice pods): ADD latency is
// pod start latency.
const AddReapBudget = 100 * time.Millisecond

// Funcs are the plugin's handlers for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: Add, Del: Del, Check: Check, GC: GC, Status: Status}
}

// Add attaches podscope to the pod's host veth and passes prevResult on.
func Add(args *skel.CmdArgs) error {
	conf, err := add(args)
	if err != nil {
		return err
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

func add(args *skel.CmdArgs) (*Config, error) {
	t := newStepTimer()
	defer t.write(args.ContainerID)
	conf, err := parseConfigLazy(args.StdinData)
	if err != nil {
		return nil, err
	}
	if conf.policySet, err = conf.policySetFor(); err != nil {
		return nil, err
	}
	if conf.PrevResult == nil {
		return nil, invalid("podscope: no prevResult: podscope is a chained plugin and must follow the plugin that creates the pod's interface (e.g. bridge) in a conflist", "")
	}
	if args.Netns == "" {
		return nil, types.NewError(types.ErrInvalidNetNS, "podscope: ADD without a netns (CNI_NETNS is empty)", "")
	}
	ips, err := containerIPs(conf.PrevResult, args.IfName)
	if err != nil {
		return nil, invalid("podscope: "+err.Error(), "")
	}
	id := parseArgs(args.Args)
	t.step("config")
	hostIndex, hostName, err := hostVeth(args.Netns, args.IfName)
	t.step("hostVeth")
	var notVeth *NotVethError
	if errors.As(err, &notVeth) && !conf.FailClosed {
		// An observer is never the reason a pod cannot start: register it
		// as unobserved, with the reason podscopectl and the metrics show.
		return conf, addUnobserved(conf, args, id, ips, fmt.Sprintf("interface %s is a %s link, not a veth", notVeth.Interface, notVeth.Type))
	}
	if err != nil {
		return nil, fmt.Errorf("podscope: finding the pod's host veth: %w", err)
	}

	unlock, err := podstate.Lock(conf.StateDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	fault.Point("add:locked")
	t.step("lock")

	reg, err := pods.OpenRegistry(conf.Root)
	if err != nil {
		return nil, types.NewError(types.ErrPluginNotAvailable, "podscope: "+err.Error(), "")
	}
	defer reg.Close()
	t.step("openRegistry")
	dp, err := datapath.Open(conf.Root)
	if err != nil {
		return nil, types.NewError(types.ErrPluginNotAvailable, "podscope: loading the datapath: "+err.Error(), "")
	}
	defer dp.Close()
	t.step("openDatapath")

	// Pods whose veth vanished without a DEL (containerd never calls GC).
	// Best effort: a failure here must not fail this pod's ADD, so it goes to
	// stderr, which runtimes log.
	if podstate.ReapDue(conf.StateDir, time.Now()) {
		st := &podstate.State{Root: conf.Root, Dir: conf.StateDir, Registry: reg, Datapath: dp}
		if _, err := st.ReapSlice(podstate.AddReapSlice, AddReapBudget); err != nil {
			fmt.Fprintf(os.Stderr, "podscope: reaper during ADD of %s: %v\n", args.ContainerID, err)
		}
		t.step(StepReap)
	}

	// One read of the registry answers both questions of ADD: is this
	// attachment known, and which pod ID is free.
	existing, found, free, err := reg.Lookup(args.ContainerID, args.IfName)
	if err != nil {
		return nil, err
	}
	t.step("lookup")
	pod := pods.Pod{
		Namespace: id.Namespace, Name: id.Pod, UID: id.PodUID,
		ContainerID: args.ContainerID, Netns: args.Netns, Interface: args.IfName,
		HostInterface: hostName, HostIfindex: hostIndex, IPs: ips,
		AttachedAt: time.Now().UTC(), Mode: conf.Mode, Network: conf.Name,
	}
	var prev *pods.Pod
	if found {
		// ADD repeated for the same attachment: same PodID, counters kept.
		pod.ID = existing.ID
		pod.AttachedAt = existing.AttachedAt
		prev = &existing
	} else if pod.ID = free; free == 0 {
		return nil, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("podscope: pod registry full: %d pods attached", pods.MaxPods), "")
	}
	if err := attach(reg, dp, pod, prev, conf, t); err != nil {
		// Another plugin's qdisc leaves tc mode no place on the veth (the
		// bandwidth plugin's egress shaping): like a pod without a veth,
		// it starts unobserved with the reason, unless failClosed. attach
		// undid its steps; a repeated ADD of an observed pod keeps its
		// running attachment and gets the error.
		var foreign *datapath.ForeignQdiscError
		if errors.As(err, &foreign) && !conf.FailClosed && (prev == nil || prev.Unobserved != "") {
			reason := fmt.Sprintf("tc mode cannot attach to %s: another plugin's %q qdisc holds its ingress side", hostName, foreign.Kind)
			// A repeated ADD's undo keeps the policy it wrote: an
			// unobserved pod holds none.
			if prev != nil {
				if err := dp.RemovePod(pod.ID); err != nil {
					return nil, err
				}
			}
			warnUnobserved(args, id, reason)
			// The entry ADD looked up and numbered, without a veth.
			pod.HostInterface, pod.HostIfindex, pod.Mode, pod.Unobserved = "", 0, "", reason
			return conf, reg.Put(pod)
		}
		return nil, err
	}
	return conf, nil
}

// warnUnobserved tells the runtime's log why the pod runs unobserved.
func warnUnobserved(args *skel.CmdArgs, id pods.Identity, reason string) {
	fmt.Fprintf(os.Stderr, "podscope: pod %s/%s (container %s): %s: it runs unobserved (no accounting, no policy); \"failClosed\": true in podscope's config refuses such pods\n",
		id.Namespace, id.Pod, args.ContainerID, reason)
}

// addUnobserved registers a pod podscope cannot attach to, with the reason,
// and touches no datapath state: DEL, GC and the reaper remove the entry
// like any other (its accounting line says it was not observed).
func addUnobserved(conf *Config, args *skel.CmdArgs, id pods.Identity, ips []netip.Prefix, reason string) error {
	warnUnobserved(args, id, reason)
	unlock, err := podstate.Lock(conf.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
	reg, err := pods.OpenRegistry(conf.Root)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "podscope: "+err.Error(), "")
	}
	defer reg.Close()
	existing, found, free, err := reg.Lookup(args.ContainerID, args.IfName)
	if err != nil {
		return err
	}
	pod := pods.Pod{
		Namespace: id.Namespace, Name: id.Pod, UID: id.PodUID,
		ContainerID: args.ContainerID, Netns: args.Netns, Interface: args.IfName,
		IPs: ips, AttachedAt: time.Now().UTC(), Network: conf.Name, Unobserved: reason,
	}
	if found {
		pod.ID, pod.AttachedAt = existing.ID, existing.AttachedAt
	} else if pod.ID = free; free == 0 {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("podscope: pod registry full: %d pods attached", pods.MaxPods), "")
	}
	return reg.Put(pod)
}

// attach registers the pod, writes its policy and attaches, all or nothing:
// on any failure the steps done so far are undone in reverse. For a repeated
// ADD (prev set) a failure restores the previous registry entry and leaves
// the running attachment alone: removing it would drop counters that no
// accounting line holds yet (the runtime's DEL after the failed ADD logs
// them).
func attach(reg *pods.Registry, dp *datapath.Datapath, pod pods.Pod, prev *pods.Pod, conf *Config, t *stepTimer) (err error) {
	var undo []func() error
	defer func() {
		if err == nil {
			return
		}
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil {
				err = fmt.Errorf("%w (undo failed too: %v)", err, uerr)
			}
		}
	}()
	if err := reg.Put(pod); err != nil {
		return invalid("podscope: "+err.Error(), "")
	}
	fault.Point("add:registered")
	t.step("register")
	if prev != nil {
		undo = append(undo, func() error { return reg.Put(*prev) })
	} else {
		undo = append(undo, func() error { return reg.Delete(pod.ID) })
		undo = append(undo, func() error { return dp.RemovePod(pod.ID) })
	}
	if err := dp.SetPolicySet(pod.ID, conf.policySet); err != nil {
		return fmt.Errorf("podscope: writing policy of pod %s: %w", pod.Ref(), err)
	}
	fault.Point("add:policy")
	t.step("policy")
	if prev == nil {
		undo = append(undo, func() error { return dp.Detach(pod.ID) })
	}
	mode, err := dp.Attach(pod.ID, pod.HostIfindex, conf.Mode)
	if err != nil {
		return fmt.Errorf("podscope: attaching to %s (ifindex %d) of pod %s: %w", pod.HostInterface, pod.HostIfindex, pod.Ref(), err)
	}
	fault.Point("add:attached")
	t.step("attach")
	pod.Mode = mode
	if err := reg.Put(pod); err != nil {
		return fmt.Errorf("podscope: recording pod %s: %w", pod.Ref(), err)
	}
	fault.Point("add:recorded")
	t.step("record")
	return nil
}

// Del logs the pod's final counters and removes everything podscope holds
// for it. containerd calls it twice (the second time with no netns and no
// prevResult): the pod is found by container ID, and the second call finds
// nothing and succeeds.
func Del(args *skel.CmdArgs) error {
	return cleanup(args.StdinData, func(_ *Config, st *podstate.State) error {
		pod, found, err := st.Registry.ByAttachment(args.ContainerID, args.IfName)
		if err != nil || !found {
			return err
		}
		return st.Teardown(pod, "del")
	})
}

// cleanup runs fn for DEL and GC: with the config parsed leniently (they
// must clean up even after the operator broke it), under the state-dir lock
// with the pinned pod state. Without bpffs under the root nothing can be
// attached, and without a registry nothing ever was: fn is not called.
func cleanup(stdin []byte, fn func(*Config, *podstate.State) error) error {
	conf, err := parseBase(stdin, true)
	if err != nil || pins.CheckBPFFS(conf.Root.Path) != nil {
		return err
	}
	return podstate.WithPinned(conf.Root, conf.StateDir, func(st *podstate.State) error { return fn(conf, st) })
}

// Check verifies the pod is registered, attached on both hooks and enforcing
// the policy the config and annotations ask for.
func Check(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	reg, err := pods.OpenPinnedRegistry(conf.Root)
	if err != nil {
		return fmt.Errorf("podscope: pod %s not registered: %w", args.ContainerID, err)
	}
	defer reg.Close()
	pod, found, err := reg.ByAttachment(args.ContainerID, args.IfName)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("podscope: container %s interface %s is not registered under %s", args.ContainerID, args.IfName, conf.Root.Path)
	}
	if pod.Unobserved != "" {
		return nil // registered as unobserved: nothing attached to check
	}
	if !podstate.HostVethAlive(pod) {
		return fmt.Errorf("podscope: host veth %s (ifindex %d) of pod %s is gone", pod.HostInterface, pod.HostIfindex, pod.Ref())
	}
	dp, err := datapath.OpenPinned(conf.Root)
	if err != nil {
		return fmt.Errorf("podscope: datapath pins under %s: %w", conf.Root.Path, err)
	}
	defer dp.Close()
	if err := dp.Check(pod.ID, pod.HostIfindex); err != nil {
		return fmt.Errorf("podscope: pod %s: %w", pod.Ref(), err)
	}
	if err := dp.CheckPolicy(pod.ID, conf.Policy); err != nil {
		return fmt.Errorf("podscope: pod %s: policy differs from the config: %w", pod.Ref(), err)
	}
	return nil
}

// GC removes every attachment that is not in cni.dev/valid-attachments,
// logging its counters first, and detaches orphans the registry lost.
func GC(args *skel.CmdArgs) error {
	return cleanup(args.StdinData, func(conf *Config, st *podstate.State) error {
		valid := map[types.GCAttachment]bool{}
		for _, a := range conf.ValidAttachments {
			valid[a] = true
		}
		all, err := st.Registry.List()
		if err != nil {
			return err
		}
		var errs []error
		known := map[datapath.PodID]bool{}
		for _, p := range all {
			// Another network's pod sharing this bpffs root: its runtime GCs it.
			other := p.Network != "" && conf.Name != "" && p.Network != conf.Name
			if other || valid[types.GCAttachment{ContainerID: p.ContainerID, IfName: p.Interface}] {
				known[p.ID] = true
				continue
			}
			if err := st.Teardown(p, "gc"); err != nil {
				errs = append(errs, err)
			}
		}
		if dp := st.Datapath; dp != nil {
			atts, err := dp.Attachments()
			if err != nil {
				errs = append(errs, err)
			}
			for _, a := range atts {
				if known[a.Pod] {
					continue
				}
				// Attached, but no registry entry: no identity to log.
				if err := dp.Detach(a.Pod); err != nil {
					errs = append(errs, err)
				}
				if err := dp.RemovePod(a.Pod); err != nil {
					errs = append(errs, err)
				}
			}
		}
		return errors.Join(errs...)
	})
}

// Status is called by containerd on every CRI status poll; failing it marks
// the node NetworkNotReady. It fails only when podscope cannot attach.
func Status(args *skel.CmdArgs) error {
	conf, err := parseBase(args.StdinData, false)
	if err != nil {
		return err
	}
	if err := pins.CheckBPFFS(conf.Root.Path); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "podscope: bpffs not mounted: "+err.Error(), "")
	}
	dp, err := datapath.OpenPinned(conf.Root)
	if err != nil {
		// Nothing pinned yet (first pod on the node): load once now, which
		// also proves the kernel accepts the programs and saves the first
		// ADD the verifier time.
		unlock, lerr := podstate.Lock(conf.StateDir)
		if lerr != nil {
			return types.NewError(types.ErrPluginNotAvailable, "podscope: "+lerr.Error(), "")
		}
		defer unlock()
		dp, err = datapath.Open(conf.Root)
		if err != nil {
			return types.NewError(types.ErrPluginNotAvailable,
				"podscope: TC programs cannot be loaded: "+strings.TrimPrefix(err.Error(), "podscope: "), "")
		}
	}
	return dp.Close()
}
